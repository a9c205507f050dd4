"""Graceful interrupt: the first Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step and save;
a second Ctrl-C within `abort_window` seconds aborts at once (KeyboardInterrupt, nothing saved).

Only a second SIGINT aborts: under torchrun, one Ctrl-C reaches the workers as SIGINT from the terminal and then
as SIGTERM from the launcher, and that pair must still end in a saved checkpoint.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, TextIO


class GracefulInterrupt:
    """Context manager installing the handlers (main thread only; elsewhere it is inert).

    `requested` turns True on the first signal; the loop polls it between steps.
    """

    def __init__(self, abort_window: float = 2.0, stream: TextIO | None = None, announce: bool = True) -> None:
        self.abort_window = abort_window
        self.stream = stream
        self.announce = announce
        self.requested = False
        self.signal_name: str | None = None
        self._last_sigint: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if signum == signal.SIGINT:
            if self._last_sigint is not None and now - self._last_sigint <= self.abort_window:
                raise KeyboardInterrupt  # the second Ctrl-C: give up on saving
            self._last_sigint = now
        if not self.requested:
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            if self.announce:
                print(
                    f"\n{self.signal_name}: finishing this step and saving a checkpoint "
                    f"(Ctrl-C again within {self.abort_window:g} s aborts without saving)",
                    file=self.stream or sys.stderr,
                    flush=True,
                )

    def __enter__(self) -> GracefulInterrupt:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
