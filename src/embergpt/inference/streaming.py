"""Incremental detokenization that never splits a UTF-8 character.

A byte-level BPE token can end in the middle of a multi-byte character (an emoji is 4 bytes, often spread over
several tokens). `TextStreamer` turns token ids into text one id at a time and holds back the bytes of an
incomplete character until the tokens that complete it arrive. Bytes that can never form a valid character are
emitted as U+FFFD, as `bytes.decode(errors="replace")` would.
"""

from __future__ import annotations

import codecs
from typing import Any


class TextStreamer:
    """s = TextStreamer(tokenizer); s.push(token_id) -> newly completed text; s.flush() -> whatever is left.

    Uses `tokenizer.decode_bytes(ids)` when the tokenizer has it, else `tokenizer.decode(ids).encode("utf-8")`.
    The concatenation of every push() and the final flush() equals decode_bytes(all ids).decode(errors="replace").
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._to_bytes = getattr(tokenizer, "decode_bytes", None) or (
            lambda ids: tokenizer.decode(ids).encode("utf-8")
        )
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""  # everything emitted so far

    def push(self, token_id: int) -> str:
        """Add one token id; return the text it completes ("" while a character is still partial)."""
        piece = self._decoder.decode(self._to_bytes([int(token_id)]), final=False)
        self.text += piece
        return piece

    def push_many(self, token_ids: list[int]) -> str:
        """Add several ids at once; return the text they complete."""
        return "".join(self.push(t) for t in token_ids)

    def flush(self) -> str:
        """End of stream: emit the held-back bytes (an incomplete character becomes U+FFFD) and reset."""
        piece = self._decoder.decode(b"", final=True)
        self.text += piece
        self._decoder.reset()
        return piece

    @property
    def pending(self) -> bool:
        """True while bytes of an incomplete character are held back."""
        buffered, _ = self._decoder.getstate()
        return len(buffered) > 0
