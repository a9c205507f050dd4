"""Finding and loading the checkpoint to serve."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from embergpt.errors import CheckpointError

# step-000100 (periodic), interrupted-step-150 (saved on Ctrl-C); interrupted-000150 is accepted too
_RUN_ENTRY = re.compile(r"(step|interrupted-step|interrupted)-(\d+)")


def latest_checkpoint(out_dir: str | Path) -> Path:
    """OUT/final when it exists, else the step-NNNNNN / interrupted-step-N directory with the highest step
    (the most recently written one on a tie)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise CheckpointError(f"{out}: no such training output directory; pass the --out directory of a run")
    if (out / "final" / "config.json").is_file():
        return out / "final"
    found = []
    for entry in out.iterdir():
        m = _RUN_ENTRY.fullmatch(entry.name)
        if m and (entry / "config.json").is_file():
            found.append((int(m.group(2)), (entry / "config.json").stat().st_mtime, entry))
    if not found:
        raise CheckpointError(f"{out}: no final/, step-*/ or interrupted-*/ checkpoint inside; train first")
    return max(found)[2]


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
