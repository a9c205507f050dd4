"""A character-level tokenizer: one id per distinct character of a corpus, then the special tokens.

Ids 0..n-1 are the characters in code-point order, n is `<|bos|>`, n+1 is `<unk>` when enabled, and then, with
`chat=True`, the other chat tokens of nanochat's template (<|user_start|> ... <|output_end|>) so that a char model
can chat. Without `<unk>`, encoding a character the corpus never had raises a TokenizerError that names it.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Sequence
from typing import Any

from embergpt.errors import TokenizerError
from embergpt.tokenizer.base import BOS, CHAT_SPECIAL_TOKENS, Tokenizer

UNK = "<unk>"


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: Sequence[str], unk: bool = False, chat: bool = False) -> None:
        chars = list(chars)
        if not chars:
            raise TokenizerError("a char tokenizer needs at least one character; build it from a non-empty corpus")
        for c in chars:
            if not isinstance(c, str) or len(c) != 1:
                raise TokenizerError(f"char tokenizer entries must be single characters, got {c!r}")
        if len(set(chars)) != len(chars):
            raise TokenizerError("char tokenizer characters must be distinct")
        names = [BOS, *([UNK] if unk else []), *(CHAT_SPECIAL_TOKENS[1:] if chat else [])]
        specials = {name: len(chars) + i for i, name in enumerate(names)}
        super().__init__(specials)
        self.chars = chars
        self.unk = unk
        self.chat = chat
        self._stoi = {c: i for i, c in enumerate(chars)}
        self._pieces = chars + list(specials)  # id -> text
        self._special_re = re.compile("|".join(re.escape(s) for s in sorted(specials, key=len, reverse=True)))

    @classmethod
    def from_text(cls, text: str, unk: bool = False, chat: bool = False) -> CharTokenizer:
        """The vocabulary of `text`: its distinct characters, sorted by code point."""
        return cls(sorted(set(text)), unk=unk, chat=chat)

    @property
    def vocab_size(self) -> int:
        return len(self._pieces)

    def token_bytes(self, token_id: int) -> bytes:
        if not 0 <= token_id < len(self._pieces):
            raise TokenizerError(f"token id {token_id!r} is not in this tokenizer's range 0..{self.vocab_size - 1}")
        return self._pieces[token_id].encode("utf-8", errors="surrogatepass")

    def _encode_plain(self, text: str, offset: int = 0) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        if self.unk:
            unk_id = self._special_tokens[UNK]
            return [stoi.get(c, unk_id) for c in text]
        pos = next(i for i, c in enumerate(text) if c not in stoi)
        c = text[pos]
        raise TokenizerError(
            f"character {c!r} (U+{ord(c):04X}) at position {offset + pos} is not in this char tokenizer's "
            f"vocabulary of {len(self.chars)} characters; build the tokenizer from a corpus that contains it, "
            "or with unk=True (CharTokenizer.from_text(..., unk=True)) to map unknown characters to <unk>"
        )

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if not allow_special:
            return self._encode_plain(text)
        ids: list[int] = []
        pos = 0
        for m in self._special_re.finditer(text):
            ids += self._encode_plain(text[pos : m.start()], pos)
            ids.append(self._special_tokens[m.group()])
            pos = m.end()
        ids += self._encode_plain(text[pos:], pos)
        return ids

    def encoding_chunks(self, text: str, chunk_chars: int) -> list[str]:
        if chunk_chars <= 0:
            raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
        # One id per character, but never cut a special token's name in half.
        pieces, start = [], 0
        while len(text) - start > chunk_chars:
            cut = start + chunk_chars
            for hit in self._special_re.finditer(text, max(start, cut - 16), cut + 16):
                if hit.start() < cut < hit.end():
                    cut = hit.end()
                    break
            pieces.append(text[start:cut])
            start = cut
        if start < len(text) or not pieces:
            pieces.append(text[start:])
        return pieces

    def _join(self, ids: Iterable[int]) -> str:
        pieces = self._pieces
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return "".join([pieces[i] for i in ids])
        except (IndexError, TypeError):
            bad = next((i for i in ids if not _is_index(i, len(pieces))), None)
            raise TokenizerError(
                f"token id {bad!r} is not in this tokenizer's range 0..{self.vocab_size - 1}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        # Joined as text, so that decode(encode(s)) == s even for lone surrogates.
        return self._join(ids)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return self._join(ids).encode("utf-8", errors="surrogatepass")

    def _payload(self) -> dict[str, Any]:
        return {"chars": self.chars, "special_tokens": self.special_tokens}

    @classmethod
    def from_payload(cls, doc: dict[str, Any]) -> CharTokenizer:
        """The tokenizer a file describes; raises TokenizerError when the fields do not fit together."""
        chars, specials = doc["chars"], doc["special_tokens"]
        if not isinstance(chars, list) or not isinstance(specials, dict):
            raise TokenizerError("'chars' must be a list and 'special_tokens' an object")
        unk = UNK in specials
        tok = cls(chars, unk=unk, chat=CHAT_SPECIAL_TOKENS[1] in specials)
        if specials != tok.special_tokens:
            raise TokenizerError(f"special_tokens {specials} do not match the expected {tok.special_tokens}")
        return tok


def _is_index(value: object, size: int) -> bool:
    try:
        return 0 <= operator.index(value) < size  # type: ignore[arg-type]
    except TypeError:
        return False
