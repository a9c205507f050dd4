"""`embergpt eval`: a checkpoint's loss and bits per byte on a text source, and its scores on tasks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embergpt.eval.multiple_choice import read_choice_items
from embergpt.eval.progress import progress_printer
from embergpt.eval.tasks import TASKS, TaskContext, run_choice_task
from embergpt.eval.text_metrics import text_loss


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | None = None,
    split: str = "val",
    tasks: Sequence[str] = (),
    task_files: Sequence[str | Path] = (),
    batch_size: int = 16,
    max_tokens: int | None = None,
    device: str | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate `checkpoint`; returns a JSON-able dict.

    data: a text source (as `train --data`); split "val" scores the last val_fraction of its tokens (training's
    validation part: the checkpoint's val_fraction, else 0.1), "all" every token. With neither data nor tasks,
    the data the checkpoint was trained on. tasks: names in TASKS. task_files: JSONL multiple-choice files.
    """
    from embergpt.checkpoint import load_checkpoint
    from embergpt.data.sources import load_text
    from embergpt.device import resolve_device

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; choose from {', '.join(sorted(TASKS))}")
    if split not in ("val", "all"):
        raise ValueError(f"split must be 'val' or 'all', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max tokens must be >= 1, got {max_tokens}")
    items_by_file = {str(f): read_choice_items(f) for f in task_files}  # malformed files fail before any work
    ck = load_checkpoint(checkpoint, device=resolve_device(device))
    if ck.tokenizer is None:
        raise ValueError(f"{checkpoint} has no tokenizer; evaluation needs one")
    train_config = ck.metadata.get("train_config") if isinstance(ck.metadata.get("train_config"), dict) else {}
    if data is None and not tasks and not task_files:
        data = train_config.get("data")
        if not isinstance(data, str):
            raise ValueError("nothing to evaluate: pass --data SOURCE, --tasks NAME or --task-file FILE")

    started = time.monotonic()
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "step": ck.metadata.get("step"),
        "num_params": sum(p.numel() for p in ck.model.parameters()),
    }
    if data is not None:
        fraction = train_config.get("val_fraction", 0.1) if split == "val" else None
        if split == "val" and not (isinstance(fraction, float) and 0.0 < fraction < 1.0):
            fraction = 0.1
        progress = progress_printer(f"data {data}") if show_progress else None
        scores = text_loss(ck.model, ck.tokenizer, load_text(data), batch_size, max_tokens, fraction, progress)
        result["data"] = {"source": data, "split": split, **scores}
    ctx = TaskContext(ck.model, ck.tokenizer, batch_size, show_progress)
    result["tasks"] = {}
    for name in tasks:
        result["tasks"][name] = TASKS[name](ctx)
    for name, items in items_by_file.items():
        result["tasks"][name] = run_choice_task(ctx, Path(name).name, items)
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def format_report(result: dict[str, Any]) -> list[str]:
    """The human-readable lines of an evaluate_checkpoint result."""
    lines = [f"checkpoint: {result['checkpoint']} (step {result.get('step')}, {result['num_params']:,} params)"]
    if "data" in result:
        d = result["data"]
        bpb = "n/a" if d["bpb"] is None else f"{d['bpb']:.4f}"
        lines.append(f"data {d['source']} ({d['split']}, {d['tokens']:,} tokens): loss {d['loss']:.4f} | "
                     f"bits per byte {bpb}")
    for name, r in result.get("tasks", {}).items():
        if "accuracy" in r and "centered_accuracy" in r:
            lines.append(f"task {name} ({r.get('items', '?')} items): accuracy {r['accuracy']:.4f} | centered "
                         f"{r['centered_accuracy']:.4f} | accuracy (sum) {r.get('accuracy_sum', float('nan')):.4f}")
        else:
            lines.append(f"task {name}: {r}")
    lines.append(f"time: {result['seconds']:.1f}s")
    return lines
