"""Learning-rate and momentum schedules: pure functions of where the run stands.

`progress` is how far the run is, in [0, 1]: step / steps for a step budget, elapsed / time_budget for a time
budget (so that a faster machine takes more, smaller-decayed steps over the same curve), the larger of the two
when both are set.
"""

from __future__ import annotations

import math


def run_progress(
    step: int, total_steps: int | None, warmup: int, elapsed: float, time_budget: float | None
) -> float:
    """How far the decay part of the schedule has gone, in [0, 1], before update number `step` (0-based)."""
    p = 0.0
    if total_steps is not None:
        p = (step - warmup) / max(1, total_steps - warmup)
    if time_budget is not None:
        p = max(p, elapsed / time_budget)
    return min(1.0, max(0.0, p))


def lr_multiplier(step: int, progress: float, warmup: int, schedule: str, min_lr_frac: float) -> float:
    """The factor on every group's base lr for update number `step` (0-based).

    Linear warm-up over `warmup` steps, then `schedule` from 1 down to `min_lr_frac` as progress goes 0 -> 1.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_frac) * progress
    if schedule == "cosine":
        return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown lr schedule {schedule!r}; use cosine, linear or constant")


def muon_momentum(step: int, start: float = 0.85, end: float = 0.95, ramp_steps: int = 300) -> float:
    """Muon's momentum, raised from `start` to `end` over the first `ramp_steps` updates (as nanochat does):
    a lower momentum early lets the first, large gradients move the weights before the average settles."""
    return start + (end - start) * min(1.0, step / ramp_steps)
