"""TrainResult: what a training run reports back (the CLI prints it; `--model compare` collects one per model)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainResult:
    out_dir: Path
    model_kind: str
    num_params: int
    step: int
    checkpoint: Path | None  # OUT/final, or OUT/interrupted-step-N
    interrupted: bool
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    train_seconds: float  # time in training steps (what --time-budget counts)
    wall_seconds: float  # everything: data, evaluation, checkpoints
    tokens: int
    tok_per_s: float  # median over the run's steps
    mfu: float | None
    metrics_path: Path | None
    plot_path: Path | None
    samples: list[str] = field(default_factory=list)
    ladder: list[TrainResult] | None = None  # --model compare: one result per model

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 0
