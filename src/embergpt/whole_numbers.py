"""Whole numbers read from outside (a flag, an environment variable, a stored config) that end up in a C call:
a random seed (torch.Generator.manual_seed takes an int64) and a CPU thread count (torch.set_num_threads takes an
int32, and asks the OS for that many threads). Checked here, once for every entry point, so that 2**70 or -1 is a
one-line ValueError naming the setting instead of "Overflow when unpacking long long" or a crash in OpenMP."""

from __future__ import annotations

from typing import Any

MAX_SEED = 2**63 - 1  # the largest value torch.Generator.manual_seed accepts
MAX_THREADS = 1024  # far above any CPU this runs on; the OS would refuse (or crawl) long before 2**31


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_seed(value: Any, name: str = "seed") -> int:
    """`value` if it is a whole number in [0, MAX_SEED]; ValueError (one line, naming `name`) otherwise."""
    if not (_is_int(value) and 0 <= value <= MAX_SEED):
        raise ValueError(f"{name} must be a whole number in [0, 2**63 - 1], got {value!r}")
    return value


def check_threads(value: Any, name: str = "threads") -> int:
    """`value` if it is a whole number in [1, MAX_THREADS]; ValueError (one line, naming `name`) otherwise."""
    if not (_is_int(value) and 1 <= value <= MAX_THREADS):
        raise ValueError(f"{name} must be a whole number of CPU threads in [1, {MAX_THREADS}], got {value!r}")
    return value
