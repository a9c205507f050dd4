"""Documents and the character tokenizer of the micro GPT.

A *document* is one line of the training text (one name). The tokenizer gives each distinct character an id,
0 .. n-1 in sorted order, and adds one special token, BOS (id n), that marks where a document starts and ends:

    "emma"  ->  [BOS, e, m, m, a, BOS]  ->  [26, 4, 12, 12, 0, 26]

The model learns to predict each next token, so it also learns to predict BOS, that is, to end a name.
"""

from __future__ import annotations

from collections.abc import Iterable


def docs_from_text(text: str) -> list[str]:
    """Split a text into documents: one per line, surrounding whitespace stripped, empty lines dropped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


class CharTokenizer:
    """Characters <-> token ids, plus a BOS token whose id is the number of characters."""

    def __init__(self, chars: Iterable[str]) -> None:
        self.chars: list[str] = sorted(set(chars))
        self.bos: int = len(self.chars)
        self._ids = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def from_docs(cls, docs: Iterable[str]) -> CharTokenizer:
        """The tokenizer whose vocabulary is every character that occurs in `docs`."""
        return cls("".join(docs))

    @property
    def vocab_size(self) -> int:
        """Number of distinct characters + 1 (BOS)."""
        return len(self.chars) + 1

    def encode(self, doc: str) -> list[int]:
        """A document -> its token ids (without BOS)."""
        try:
            return [self._ids[ch] for ch in doc]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the tokenizer's vocabulary") from None

    def encode_doc(self, doc: str) -> list[int]:
        """A document wrapped in BOS on both sides: what the model trains on."""
        return [self.bos, *self.encode(doc), self.bos]

    def decode(self, ids: Iterable[int]) -> str:
        """Token ids -> text; BOS tokens are dropped."""
        return "".join(self.chars[i] for i in ids if i != self.bos)
