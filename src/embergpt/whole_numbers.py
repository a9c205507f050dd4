"""Numbers read from outside (a flag, an environment variable, a stored config, a request), checked before use.

`is_whole` and `is_finite_number` are the two tests every range check in the package starts from (a bool is not a
number here, and NaN / infinity are not finite). The two checks below are for whole numbers that end up in a C call:
a random seed (torch.Generator.manual_seed takes an int64) and a CPU thread count (torch.set_num_threads takes an
int32, and asks the OS for that many threads). Checked here, once for every entry point, so that 2**70 or -1 is a
one-line ValueError naming the setting instead of "Overflow when unpacking long long" or a crash in OpenMP."""

from __future__ import annotations

import math
from typing import Any

MAX_SEED = 2**63 - 1  # the largest value torch.Generator.manual_seed accepts
MAX_THREADS = 1024  # far above any CPU this runs on; the OS would refuse (or crawl) long before 2**31


def is_whole(value: Any, low: int, high: float) -> bool:
    """Whether `value` is an int (not a bool) in [low, high]."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def is_finite_number(value: Any) -> bool:
    """Whether `value` is an int or float (not a bool) and finite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """`value` if it is a whole number in [0, MAX_SEED]; ValueError (one line, naming `name`) otherwise."""
    if not is_whole(value, 0, MAX_SEED):
        raise ValueError(f"{name} must be a whole number in [0, 2**63 - 1], got {value!r}")
    return value


def check_threads(value: Any, name: str = "threads") -> int:
    """`value` if it is a whole number in [1, MAX_THREADS]; ValueError (one line, naming `name`) otherwise."""
    if not is_whole(value, 1, MAX_THREADS):
        raise ValueError(f"{name} must be a whole number of CPU threads in [1, {MAX_THREADS}], got {value!r}")
    return value
