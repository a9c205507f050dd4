"""The layout of a training run's output directory, owned here: training writes it, serve and the CLI find
checkpoints in it, and the save code's leftovers are recognised by it.

    OUT/
      final/                   the checkpoint at the end of the run
      step-000500/             periodic checkpoints (--checkpoint-interval; the K most recent kept)
      interrupted-step-N/      written on a graceful interrupt (Ctrl-C, SIGTERM)
      metrics.jsonl            one JSON object per log line
      bigram/ ... gpt/         `--model compare`: one such run per rung of the teaching ladder, bottom to top

While a checkpoint is saved, `.NAME.tmp-PID-XXXXXXXX/` holds the new one and `.NAME.previous/` the one it
replaces (embergpt.checkpoint). A crash can leave either behind; `leftovers` finds them by that pattern only.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from pathlib import Path

FINAL = "final"
METRICS = "metrics.jsonl"
PERIODIC = re.compile(r"step-(\d{6,})")
INTERRUPTED = re.compile(r"interrupted-step-(\d+)")
LADDER_RUNGS = ("bigram", "single-head", "multi-head", "gpt")  # --model compare's sub-runs, bottom to top
_CHECKPOINT_NAME = r"(?:final|step-\d{6,}|interrupted-step-\d+)"
TEMPORARY = re.compile(rf"\.({_CHECKPOINT_NAME})\.tmp-(\d+)-[0-9a-f]{{8}}")
BACKUP = re.compile(rf"\.({_CHECKPOINT_NAME})\.previous")
# What a checkpoint directory may hold (embergpt.checkpoint writes nothing else): a leftover directory holding
# anything more is not ours to delete.
_CHECKPOINT_FILE = re.compile(r"[a-z0-9_]+\.(?:json|safetensors)")


def periodic_name(step: int) -> str:
    return f"step-{step:06d}"


def interrupted_name(step: int) -> str:
    return f"interrupted-step-{step}"


def temporary_path(checkpoint: Path) -> Path:
    """Where a save of `checkpoint` is written before it is renamed into place (unique per process and call)."""
    return checkpoint.parent / f".{checkpoint.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def backup_path(checkpoint: Path) -> Path:
    """Where the checkpoint a save replaces waits until the new one is in place."""
    return checkpoint.parent / f".{checkpoint.name}.previous"


def metrics_path(out: str | Path) -> Path:
    return Path(out) / METRICS


def checkpoint_step(name: str) -> int | None:
    """The step of a periodic or interrupted checkpoint's directory name; None for any other name."""
    m = PERIODIC.fullmatch(name) or INTERRUPTED.fullmatch(name)
    return int(m.group(1)) if m else None


def is_checkpoint_name(name: str) -> bool:
    """final, step-NNNNNN or interrupted-step-N: a name that says "a checkpoint of the run above"."""
    return name == FINAL or checkpoint_step(name) is not None


def run_of(checkpoint: str | Path) -> Path | None:
    """The run directory a checkpoint belongs to (its parent), when its name is one training writes."""
    path = Path(checkpoint)
    return path.parent if is_checkpoint_name(path.name) else None


def earlier_run(out: Path) -> list[str]:
    """What of a training run `out` holds: final, step-*, interrupted-step-*, metrics.jsonl."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name == METRICS or is_checkpoint_name(p.name))


def periodic_checkpoints(out: Path) -> list[tuple[int, Path]]:
    """(step, path) of the periodic checkpoints in `out`, oldest first."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        m = PERIODIC.fullmatch(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _complete(checkpoint: Path) -> bool:
    return (checkpoint / "config.json").is_file()  # saves are renamed into place whole: no half checkpoints


def latest_checkpoint(out_dir: str | Path) -> Path:
    """The checkpoint a user means by "the run in OUT": OUT/final when it exists, else the step-NNNNNN or
    interrupted-step-N with the highest step (the most recently written one on a tie). For a `--model compare`
    run, the same inside its top rung (OUT/gpt). FileNotFoundError names what was looked for."""
    out = Path(out_dir)
    if not out.is_dir():
        raise FileNotFoundError(f"{out}: no such training output directory; pass the --out directory of a run")
    if _complete(out / FINAL):
        return out / FINAL
    found = []
    for entry in out.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and _complete(entry):
            found.append((step, (entry / "config.json").stat().st_mtime, entry))
    if found:
        return max(found)[2]
    for rung in reversed(LADDER_RUNGS):
        if (out / rung).is_dir() and earlier_run(out / rung):
            return latest_checkpoint(out / rung)
    raise FileNotFoundError(
        f"{out}: no final/, step-*/ or interrupted-step-*/ checkpoint inside (nor a --model compare run's gpt/); "
        "train first, or pass the --out directory of a run"
    )


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # never a saver's pid (and os.kill(0, ...) would mean our own process group)
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def _only_checkpoint_files(directory: Path) -> bool:
    try:
        return all(_CHECKPOINT_FILE.fullmatch(p.name) and p.is_file() and not p.is_symlink()
                   for p in directory.iterdir())
    except OSError:
        return False


def leftovers(out: Path) -> list[Path]:
    """What a crashed save left in `out`: `.NAME.tmp-PID-X/` whose process is gone, and `.NAME.previous/` whose
    NAME/ exists again (when it does not, the backup is the checkpoint and a load restores it). Only directories
    of this naming pattern that hold nothing but checkpoint files: never anything a user put there."""
    if not out.is_dir():
        return []
    found = []
    for p in out.iterdir():
        if p.is_symlink() or not p.is_dir():
            continue
        tmp, backup = TEMPORARY.fullmatch(p.name), BACKUP.fullmatch(p.name)
        stale = (tmp and not _pid_alive(int(tmp.group(2)))) or (backup and (out / backup.group(1)).is_dir())
        if stale and _only_checkpoint_files(p):
            found.append(p)
    return sorted(found)


def clean_leftovers(out: Path) -> list[Path]:
    """Delete `leftovers(out)`; returns what went."""
    gone = leftovers(out)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return gone
