"""Benchmarks behind `embergpt bench NAME`. Each module defines `add_arguments(parser)` and `run(args) -> dict`.

Speed goals are compared against a baseline measured in the same run, as a ratio, using medians.
"""

from __future__ import annotations

from embergpt.whole_numbers import is_finite_number, is_whole

# The largest value a benchmark's count or duration may take: far beyond a real measurement, low enough that 2**63
# repeats, a batch of 2**63 rows (a tensor shape: a C++ crash) or 1e308 seconds is refused before any work starts.
MAX_COUNT = 1_000_000
MAX_ROWS = 4096  # a batch of rows decoded or clients served together (the server's own max_batch bound)
MAX_SECONDS = 86400.0


def check_count(flag: str, value: int, high: int = MAX_COUNT) -> int:
    """`value` if it is a whole number in [1, high]; a one-line ValueError naming `flag` otherwise."""
    if not is_whole(value, 1, high):
        raise ValueError(f"{flag} must be a whole number in [1, {high:,}], got {value!r}")
    return value


def check_seconds(flag: str, value: float, high: float = MAX_SECONDS) -> float:
    """`value` if it is a finite number in (0, high]; a one-line ValueError naming `flag` otherwise."""
    if not (is_finite_number(value) and 0 < value <= high):
        raise ValueError(f"{flag} must be a finite number of seconds in (0, {high:g}], got {value!r}")
    return value


def parse_positive_ints(text: str, flag: str, example: str, high: int = MAX_COUNT) -> list[int]:
    """The integers of a comma-separated flag value, each in [1, high] (at least one); a one-line ValueError
    otherwise."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1 or max(values) > high:
        raise ValueError(f"{flag} takes comma-separated whole numbers in [1, {high:,}], e.g. {example}; "
                         f"got {str(text)[:80]!r}")
    return values
