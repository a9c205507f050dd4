"""Benchmarks behind `embergpt bench NAME`. Each module defines `add_arguments(parser)` and `run(args) -> dict`.

Speed goals are compared against a baseline measured in the same run, as a ratio, using medians.
"""


def parse_positive_ints(text: str, flag: str, example: str) -> list[int]:
    """The integers of a comma-separated flag value, each >= 1 (at least one); a one-line ValueError otherwise."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"{flag} takes comma-separated positive integers, e.g. {example}; got {text!r}")
    return values
