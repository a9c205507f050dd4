"""Training a tokenizer on a text source and measuring it: what `embergpt tokenizer train` runs."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from embergpt.atomic_write import check_output_path
from embergpt.tokenizer.base import Tokenizer

DEFAULT_BPE_VOCAB_SIZE = 4096
PROGRESS_BYTES = 8 << 20  # inputs above this announce each stage: BPE training takes ~1 s per MB on 2 cores


@dataclass(frozen=True)
class TrainReport:
    """What training produced, with its compression measured on text the BPE merges never saw."""

    tokenizer: Tokenizer
    source: str
    seconds: float
    train_bytes: int
    heldout_bytes: int
    heldout_tokens: int
    output: str | None = None

    @property
    def bytes_per_token(self) -> float:
        return self.heldout_bytes / max(1, self.heldout_tokens)

    def lines(self) -> list[str]:
        tok = self.tokenizer
        out = [
            f"kind: {tok.kind}",
            f"vocab size: {tok.vocab_size} ({len(tok.special_tokens)} special tokens)",
            f"trained on: {self.train_bytes:,} bytes of {self.source} in {self.seconds:.2f} s",
            f"compression: {self.bytes_per_token:.3f} bytes/token on a held-out {self.heldout_bytes:,} bytes",
        ]
        if self.output:
            out.append(f"saved: {self.output} (sha256 {tok.sha256})")
        return out


def heldout_split(text: str, fraction: float = 0.1) -> tuple[str, str]:
    """(head, tail) with about `fraction` of `text` in the tail, cut after a newline when one is near."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    cut = len(text) - int(len(text) * fraction)
    newline = text.find("\n", cut)
    if 0 <= newline < len(text) - 1 and newline - cut < max(1000, len(text) // 100):
        cut = newline + 1
    return text[:cut], text[cut:]


def bytes_per_token(tokenizer: Tokenizer, text: str) -> float:
    """UTF-8 bytes of `text` per token: higher is better compression."""
    return len(text.encode("utf-8")) / max(1, len(tokenizer.encode(text)))


def train_tokenizer(
    source: str,
    kind: str = "bpe",
    vocab_size: int | None = None,
    output: str | os.PathLike[str] | None = None,
    heldout_fraction: float = 0.1,
    progress: Callable[[str], None] | None = None,
) -> TrainReport:
    """Load `source` (see `embergpt.data.load_text`), train a tokenizer on all but its last `heldout_fraction`,
    measure bytes/token on that tail, and save it to `output` when given.

    A char tokenizer takes its characters from the whole text (the tail must be encodable) and ignores
    `vocab_size`; BPE defaults to 4096 ids, special tokens included. `progress(message)` hears about each stage
    of a large input (over PROGRESS_BYTES), which can take minutes."""
    from embergpt.data.sources import load_text
    from embergpt.tokenizer.bpe import BPETokenizer
    from embergpt.tokenizer.char import CharTokenizer

    if kind not in ("bpe", "char"):
        raise ValueError(f"unknown tokenizer kind {kind!r}; use bpe or char")
    if output is not None:  # refused before minutes of training, not after
        check_output_path(output, "--output")
    text = load_text(source)
    head, tail = heldout_split(text, heldout_fraction)
    size = len(head.encode("utf-8"))
    say = progress if progress is not None and size > PROGRESS_BYTES else (lambda message: None)
    say(f"training a {kind} tokenizer on {size / 1e6:.1f} MB of {source} (about 1 s per MB on 2 CPU cores)...")
    start = time.perf_counter()
    if kind == "bpe":
        tok: Tokenizer = BPETokenizer.train(head, DEFAULT_BPE_VOCAB_SIZE if vocab_size is None else vocab_size)
    else:
        tok = CharTokenizer.from_text(text)
    seconds = time.perf_counter() - start
    say(f"trained in {seconds:.1f} s; measuring compression on the held-out {len(tail) / 1e6:.1f} MB...")
    if output is not None:
        tok.save(output)
    return TrainReport(
        tokenizer=tok,
        source=source,
        seconds=seconds,
        train_bytes=len(head.encode("utf-8")),
        heldout_bytes=len(tail.encode("utf-8")),
        heldout_tokens=len(tok.encode(tail)) if tail else 0,
        output=None if output is None else os.fspath(output),
    )
