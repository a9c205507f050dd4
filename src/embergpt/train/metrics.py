"""Run logs: `metrics.jsonl` (one JSON object per line) and the loss-curve PNG.

Records (every one has "step", the optimizer updates done when it was written):
    train  {"kind": "train", "step", "train_loss", "lr", "grad_norm", "tokens", "tok_per_s", "mfu", "elapsed"}
    eval   {"kind": "eval", "step", "val_loss", "val_bpb", "elapsed"}

`elapsed` is the seconds spent in training steps so far (evaluation, sampling and checkpoints excluded: what
--time-budget counts). `tok_per_s`, `mfu` and `elapsed` are wall-clock measurements; everything else is
reproducible (a resumed run writes the same values bit for bit on CPU). WALL_CLOCK_FIELDS lists the former.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

WALL_CLOCK_FIELDS = ("tok_per_s", "mfu", "elapsed")


class MetricsLog:
    """Appends records to `path` (rewritten from `history` first, so a resumed run's file matches its state)."""

    def __init__(self, path: Path | None, history: Sequence[dict[str, Any]] = ()) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = list(history)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w") as f:
                for r in self.records:
                    f.write(json.dumps(r) + "\n")

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def last(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.records) if r.get("kind") == kind), None)


MAX_LOG_BYTES = 256 << 20
MAX_RECORD_BYTES = 64 << 10


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl: only a regular file of at most MAX_LOG_BYTES, each line a flat JSON object
    (bounded in size and depth); InputFileError names the file and line otherwise."""
    from embergpt.bounded_json import expect_object, loads
    from embergpt.input_files import read_regular_text

    text = read_regular_text(path, max_bytes=MAX_LOG_BYTES, what="metrics log")
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            where = f"metrics log {str(path)!r} line {number}"
            records.append(expect_object(loads(line, what=where, max_bytes=MAX_RECORD_BYTES, max_depth=2), where))
    return records


def _figure(width: float = 7.0, height: float = 4.2) -> Any:
    # The object-oriented API with the Agg canvas: no pyplot, no global backend switch, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_losses(records: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Train loss (light: per step, dark: smoothed) and val loss against step, written to `path` as PNG."""
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    if train:
        steps = [r["step"] for r in train]
        losses = [r["train_loss"] for r in train]
        ax.plot(steps, losses, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(losses, max(1, len(losses) // 50)), color="tab:blue", label="train")
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", color="tab:orange", label="val")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def plot_comparison(runs: dict[str, Sequence[dict[str, Any]]], path: str | Path, title: str = "") -> Path:
    """One val-loss curve per model (x = training seconds, so models of different speed compare fairly)."""
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for name, records in runs.items():
        evals = [r for r in records if r.get("kind") == "eval"]
        ax.plot([r["elapsed"] for r in evals], [r["val_loss"] for r in evals], "o-", markersize=3, label=name)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("validation loss (nats / token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
