"""Turning a stream of generated token ids into text deltas, honouring stop strings.

A stop string may arrive split over several tokens, so text that could be the start of one is held back until
the next tokens show whether it is (generation ends, the stop string is not emitted) or is not (it is released).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embergpt.inference.streaming import TextStreamer


class StopText:
    """out = StopText(tokenizer, stop=["\\nUser:"]); out.push(id) -> text safe to emit; out.finish() -> the rest.

    `stopped` turns True when a stop string appeared; the caller should then end the generation.
    `text` is everything emitted so far.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()) -> None:
        self._streamer = TextStreamer(tokenizer)
        self._stop = [s for s in stop if s]
        self._pending = ""
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self._pending += self._streamer.push(token_id)
        return self._release(final=False)

    def finish(self) -> str:
        if self.stopped:
            return ""
        self._pending += self._streamer.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        cut = min((i for i in (self._pending.find(s) for s in self._stop) if i >= 0), default=-1)
        if cut >= 0:
            out, self._pending, self.stopped = self._pending[:cut], "", True
        else:
            hold = 0 if final else self._held_back()
            out = self._pending[: len(self._pending) - hold]
            self._pending = self._pending[len(self._pending) - hold :]
        self.text += out
        return out

    def _held_back(self) -> int:
        """Length of the longest end of the pending text that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(self._pending)), best, -1):
                if self._pending.endswith(s[:k]):
                    best = k
                    break
        return best
