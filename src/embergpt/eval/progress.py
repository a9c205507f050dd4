"""Progress lines for evaluations that take more than a few seconds (on stderr, never on a JSON stdout)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

ProgressFn = Callable[[int, int], None]  # (done, total)


def progress_printer(label: str, stream: TextIO | None = None, after: float = 3.0, every: float = 2.0
                     ) -> ProgressFn:
    """A (done, total) callback printing "eval LABEL: done/total (x%), Ns left" every `every` seconds, starting
    `after` seconds in, so that a quick evaluation prints nothing."""
    start = time.monotonic()
    last = start + after - every

    def update(done: int, total: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last < every:
            return
        last = now
        left = (now - start) / max(done, 1) * (total - done)
        print(f"eval {label}: {done}/{total} ({100 * done / max(total, 1):.0f}%), {left:.0f}s left",
              file=stream or sys.stderr, flush=True)

    return update
