"""One module per CLI verb. Each defines `add_arguments(parser)` and `run(args) -> int`."""
