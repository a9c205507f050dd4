"""The training loss curve of a checkpoint, for the web UI.

Training writes `metrics.jsonl` (one JSON object per line: step, train_loss, val_loss, ...) in the run's output
directory, the parent of OUT/final and OUT/step-NNNNNN. A checkpoint's metadata may also carry "metrics".
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MAX_BYTES = 64 << 20
MAX_POINTS = 2000
FIELDS = ("train_loss", "val_loss", "loss", "lr")


def _point(obj: Any) -> dict[str, float] | None:
    if not isinstance(obj, dict):
        return None
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return None
    point = {"step": step}
    for name in FIELDS:
        value = obj.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            point[name] = value
    if "train_loss" not in point and "loss" in point:
        point["train_loss"] = point.pop("loss")
    return point if len(point) > 1 else None


def _thin(points: list[dict[str, float]], limit: int) -> list[dict[str, float]]:
    """At most `limit` points, evenly spaced; points carrying a val_loss are always kept (they are few)."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    return [p for i, p in enumerate(points) if i % stride == 0 or "val_loss" in p or i == len(points) - 1]


def read_metrics(checkpoint_dir: Path | None, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """{"source": "metrics.jsonl" | "metadata" | None, "points": [{step, train_loss?, val_loss?, lr?}]}."""
    points: list[dict[str, float]] = []
    source = None
    if checkpoint_dir is not None:
        path = checkpoint_dir.parent / "metrics.jsonl"
        if path.is_file():
            try:
                with open(path, "rb") as f:
                    data = f.read(MAX_BYTES)
            except OSError:
                data = b""
            for line in data.splitlines():
                try:
                    p = _point(json.loads(line))
                except (ValueError, UnicodeDecodeError):
                    continue  # a partly written last line while training runs
                if p is not None:
                    points.append(p)
            source = "metrics.jsonl" if points else None
    if not points and metadata:
        metrics = metadata.get("metrics")
        candidates = metrics if isinstance(metrics, list) else (metrics or {}).get("history", []) if isinstance(
            metrics, dict
        ) else []
        points = [p for p in (_point(m) for m in candidates) if p is not None]
        source = "metadata" if points else None
    points.sort(key=lambda p: p["step"])
    return {"source": source, "points": _thin(points, MAX_POINTS)}
