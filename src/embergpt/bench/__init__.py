"""Benchmarks behind `embergpt bench NAME`. Each module defines `add_arguments(parser)` and `run(args) -> dict`.

Speed goals are compared against a baseline measured in the same run, as a ratio, using medians.
"""
