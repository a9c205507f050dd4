"""A one-line progress bar: step, loss, tok/s, MFU and ETA, redrawn in place on a terminal.

On a terminal it redraws at most ~8 times a second; into a file or pipe it writes a plain line every few
seconds instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_count(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 24, enabled: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last_draw = 0.0
        self._dirty = False

    def update(
        self,
        step: int,
        total: int | None,
        progress: float,
        loss: float,
        tok_per_s: float,
        mfu: float | None,
        eta_s: float | None,
        force: bool = False,
    ) -> None:
        """Draw the state after `step` updates; `progress` in [0, 1] fills the bar (steps or time)."""
        if not self.enabled:
            return
        now = time.monotonic()
        interval = 0.125 if self.tty else 5.0
        if not force and now - self._last_draw < interval:
            return
        self._last_draw = now
        filled = int(self.width * min(1.0, max(0.0, progress)))
        bar = "█" * filled + "·" * (self.width - filled)
        steps = f"{step}/{total}" if total else f"{step}"
        parts = [f"{bar} step {steps}", f"loss {loss:.4f}", f"{format_count(tok_per_s)} tok/s"]
        if mfu is not None:
            parts.append(f"MFU {100 * mfu:.1f}%")
        if eta_s is not None:
            parts.append(f"ETA {format_duration(eta_s)}")
        line = " | ".join(parts)
        if self.tty:
            self.stream.write("\r\033[K" + line)
            self._dirty = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Erase the in-place line, so that other output takes its place (the next update redraws it)."""
        if self.enabled and self.tty and self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._dirty = False

    def finish(self) -> None:
        """Keep the last drawn line and move below it."""
        if self.enabled and self.tty and self._dirty:
            self.stream.write("\n")
            self.stream.flush()
            self._dirty = False
