"""`--threads auto`: pick the CPU thread count that is fastest right now, and check again when steps slow down.

Why: on a machine whose cores are shared, multi-threaded OpenMP kernels wait at every barrier for their slowest
thread; when another process holds one of the cores that thread is descheduled, and a 2-thread training step on
2 cores was measured 10-40x slower than a 1-thread one (while on idle cores 2 threads are ~2x faster). A short
matmul race between 1 and N threads tells which regime we are in.
"""

from __future__ import annotations

import time

import torch

RECHECK_SECONDS = 30.0  # of training time between races
SLOW_STEP_FACTOR = 2.5  # a step this much slower than the recent median triggers a race at once


def _race(threads: int, seconds: float) -> float:
    """Matmuls per second at `threads` threads, for a shape like a small model's projections."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 128), torch.randn(128, 512)
    a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    return n / (time.perf_counter() - start)


def fastest_thread_count(max_threads: int, seconds: float = 0.1) -> int:
    """1 or `max_threads`, whichever runs small matmuls faster now (max_threads must win by 20%)."""
    if max_threads <= 1:
        return 1
    one = many = 0.0
    for _ in range(2):  # interleaved, so a burst of load elsewhere hits both alike
        one = max(one, _race(1, seconds / 2))
        many = max(many, _race(max_threads, seconds / 2))
    best = max_threads if many > 1.2 * one else 1
    torch.set_num_threads(best)
    return best


class ThreadTuner:
    """Holds the thread count for a CPU run with `--threads auto`; `restore()` puts the caller's back."""

    def __init__(self, max_threads: int) -> None:
        self.max_threads = max_threads
        self.original = torch.get_num_threads()
        self.threads = fastest_thread_count(max_threads)
        self.last_check = 0.0
        self.recent: list[float] = []

    def after_step(self, step_seconds: float, train_seconds: float) -> bool:
        """Record a step; race again when it is due or the step was unusually slow. True if the count changed."""
        median = sorted(self.recent)[len(self.recent) // 2] if len(self.recent) >= 5 else None
        self.recent = (self.recent + [step_seconds])[-20:]
        slow = median is not None and step_seconds > SLOW_STEP_FACTOR * median
        if not slow and train_seconds - self.last_check < RECHECK_SECONDS:
            return False
        self.last_check = train_seconds
        before, self.threads = self.threads, fastest_thread_count(self.max_threads)
        if self.threads != before:
            self.recent = []  # the old timings describe the other regime
        return self.threads != before

    def restore(self) -> None:
        torch.set_num_threads(self.original)
