"""Finding and loading the checkpoint to serve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embergpt import run_dir
from embergpt.errors import CheckpointError


def latest_checkpoint(out_dir: str | Path) -> Path:
    """The checkpoint of the run in `out_dir` (embergpt.run_dir.latest_checkpoint), as a CheckpointError."""
    try:
        return run_dir.latest_checkpoint(out_dir)
    except FileNotFoundError as e:
        raise CheckpointError(str(e)) from None


def load_for_serving(
    checkpoint: str | Path | None = None,
    load_latest: str | Path | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[Any, Path]:
    """(embergpt.checkpoint.Checkpoint, its directory) for --checkpoint DIR or --load-latest OUT_DIR."""
    from embergpt.checkpoint import load_checkpoint
    from embergpt.device import resolve_device, resolve_dtype

    if (checkpoint is None) == (load_latest is None):
        raise ValueError("pass exactly one of --checkpoint DIR or --load-latest OUT_DIR")
    path = Path(checkpoint) if checkpoint is not None else latest_checkpoint(load_latest)
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, device=dev, dtype=resolve_dtype(dtype, dev))
    if ckpt.tokenizer is None:
        raise CheckpointError(f"{path}: the checkpoint has no tokenizer.json; serving needs one to read prompts")
    return ckpt, path
