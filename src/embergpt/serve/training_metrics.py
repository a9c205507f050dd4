"""The training loss curve of a checkpoint, for the web UI.

Training writes `metrics.jsonl` (one JSON object per line: step, train_loss, val_loss, ...) in the run's output
directory, the parent of OUT/final and OUT/step-NNNNNN. A checkpoint's metadata may also carry "metrics".

The log comes from disk and may be huge, still growing, or hostile, so reading it is bounded:
- only a regular file is read (a FIFO or a device named metrics.jsonl is ignored);
- at most MAX_BYTES are read: a larger log is sampled as WINDOWS evenly spaced windows of whole lines, so the curve
  still spans the whole run;
- a line longer than MAX_LINE_BYTES or nested deeper than MAX_DEPTH is skipped, never parsed;
- at most MAX_POINTS points are returned;
- the result is cached by the file's (device, inode, size, mtime), and concurrent readers of one file wait for a
  single parse instead of each parsing it.
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from embergpt import run_dir
from embergpt.bounded_json import loads
from embergpt.errors import EmbergptError
from embergpt.input_files import open_regular_file

MAX_BYTES = 1 << 20
WINDOWS = 512  # windows of MAX_BYTES // WINDOWS = 2 KiB each when sampling a log over MAX_BYTES
MAX_LINE_BYTES = 4096
MAX_DEPTH = 4
MAX_POINTS = 2000
CACHE_ENTRIES = 8
FIELDS = ("train_loss", "val_loss", "loss", "lr")


def _point(obj: Any) -> dict[str, float] | None:
    if not isinstance(obj, dict):
        return None
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step):
        return None
    point = {"step": step}
    for name in FIELDS:
        value = obj.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            point[name] = value
    if "train_loss" not in point and "loss" in point:
        point["train_loss"] = point.pop("loss")
    return point if len(point) > 1 else None


def _parse_line(line: bytes) -> dict[str, float] | None:
    if not line.strip() or len(line) > MAX_LINE_BYTES:
        return None
    try:
        if line.count(b"{") + line.count(b"[") <= MAX_DEPTH:
            # No deeper than its bracket count: safe for json.loads (bounded_json's scan costs ~10x a parse).
            return _point(json.loads(line))
        return _point(loads(line, what="metrics.jsonl line", max_bytes=MAX_LINE_BYTES, max_depth=MAX_DEPTH))
    except (EmbergptError, ValueError):
        return None  # not JSON (e.g. a partly written last line while training runs), too deep...


def _thin(points: list[dict[str, float]], limit: int) -> list[dict[str, float]]:
    """At most `limit` points, evenly spaced; points carrying a val_loss are preferred (they are few), but thinned
    too when they alone exceed half the limit."""
    if len(points) <= limit:
        return points
    val = [i for i, p in enumerate(points) if "val_loss" in p]
    if len(val) > limit // 2:
        stride = math.ceil(len(val) / (limit // 2))
        val = val[::stride]
    keep = set(val)
    rest = limit - len(keep)
    stride = max(1, math.ceil(len(points) / max(1, rest - 1)))
    keep.update(range(0, len(points), stride))
    keep.add(len(points) - 1)
    return [points[i] for i in sorted(keep)]  # at most len(val) + (rest - 1) + 1 = limit


def _read_lines(fd: int, size: int) -> list[bytes]:
    """The complete lines of the file: all of them when it fits MAX_BYTES, else those inside WINDOWS windows."""
    if size <= MAX_BYTES:
        return os.pread(fd, MAX_BYTES, 0).splitlines()
    window = MAX_BYTES // WINDOWS
    lines: list[bytes] = []
    for i in range(WINDOWS):
        offset = i * (size - window) // (WINDOWS - 1)
        parts = os.pread(fd, window, offset).split(b"\n")
        first = 0 if offset == 0 else 1  # a window starting mid-line drops that line's tail
        last = len(parts) if offset + window >= size else len(parts) - 1  # ... and its cut-off last line
        lines.extend(parts[first:last])
    return lines


def read_log(path: Path) -> list[dict[str, float]] | None:
    """The points of one metrics.jsonl (sorted by step, at most MAX_POINTS), or None when it is not a readable
    regular file. Uncached; see `MetricsCache`."""
    try:
        fd, size = open_regular_file(path, max_bytes=None, what="metrics log")
    except EmbergptError:
        return None
    try:
        lines = _read_lines(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)
    points = [p for p in map(_parse_line, lines) if p is not None]
    points.sort(key=lambda p: p["step"])
    return _thin(points, MAX_POINTS)


class MetricsCache:
    """read_log with the result kept per file until the file changes (by device, inode, size and mtime)."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self._lock = threading.Lock()  # one parse at a time: concurrent requests wait and then hit the cache
        self._cache: OrderedDict[str, tuple[tuple[int, ...], list[dict[str, float]] | None]] = OrderedDict()
        self.parses = 0  # how many times a log was actually read (for tests and curiosity)

    def get(self, path: Path) -> list[dict[str, float]] | None:
        key = str(path)
        with self._lock:
            try:
                st = os.stat(path)
            except OSError:
                return None
            stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            hit = self._cache.get(key)
            if hit is not None and hit[0] == stamp:
                self._cache.move_to_end(key)
                return hit[1]
            points = read_log(path)
            self.parses += 1
            self._cache[key] = (stamp, points)
            self._cache.move_to_end(key)
            while len(self._cache) > self.entries:
                self._cache.popitem(last=False)
            return points


_LOGS = MetricsCache()


def _metadata_points(metadata: dict[str, Any]) -> list[dict[str, float]]:
    metrics = metadata.get("metrics")
    if isinstance(metrics, dict):
        metrics = metrics.get("history", [])
    if not isinstance(metrics, list):
        return []
    points = [p for p in (_point(m) for m in metrics[: MAX_POINTS * 16]) if p is not None]
    points.sort(key=lambda p: p["step"])
    return _thin(points, MAX_POINTS)


def read_metrics(
    checkpoint_dir: Path | None, metadata: dict[str, Any] | None, cache: MetricsCache | None = None
) -> dict[str, Any]:
    """{"source": "metrics.jsonl" | "metadata" | None, "points": [{step, train_loss?, val_loss?, lr?}]}."""
    if checkpoint_dir is not None:
        points = (cache or _LOGS).get(run_dir.metrics_path(Path(checkpoint_dir).parent))
        if points:
            return {"source": "metrics.jsonl", "points": points}
    points = _metadata_points(metadata) if isinstance(metadata, dict) else []
    return {"source": "metadata" if points else None, "points": points}
