"""Byte-level BPE with the GPT-4 split pattern: trained by rustbpe, run by tiktoken.

rustbpe learns the merges (`train_from_iterator`) and hands back `get_mergeable_ranks()`: token bytes -> rank,
the first 256 ranks being the single bytes. tiktoken's `Encoding` is built from those ranks plus the special
tokens, which take the ids right after them. The file stores the pattern, the ranks (base64, in rank order) and
the special tokens: no pickle.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import tiktoken

from embergpt.errors import TokenizerError
from embergpt.tokenizer.base import CHAT_SPECIAL_TOKENS, Tokenizer

# GPT-4's (cl100k) pre-tokenisation pattern: contractions, words with one leading non-letter, 1-3 digit groups,
# punctuation runs, newline runs, other whitespace.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
MIN_VOCAB_SIZE = 256 + len(CHAT_SPECIAL_TOKENS)
MAX_VOCAB_SIZE = 1 << 20
# Under GPT4_SPLIT_PATTERN no pre-token contains a newline followed by a letter (the only pieces holding a
# newline end at it, and `\s*[\r\n]` is tried before the look-ahead alternative), so text cut right after such a
# newline encodes, piece by piece, to exactly the ids of the whole.
_SAFE_CUT = re.compile(r"\n(?=[A-Za-z])")
MAX_PATTERN_CHARS = 4096
# Text of every kind a pattern meets: letters with and without accents, digits, punctuation, runs of spaces and
# tabs, CRLF and LF, CJK, an emoji, contractions. A usable pattern splits it into non-empty, contiguous pieces.
PATTERN_PROBE = (
    "Hello, world! It's 12345 o'clock.\n\n\tTabs  and   spaces\r\nÉté naïve café — 東京 😀 x+=1; "
    '"quotes" (parens) [a_b] {c} 3.14e-10 ¿Qué? \u00a0nbsp\n  trailing   '
)


def check_pattern(pattern: object) -> str:
    """`pattern` when it is a usable pre-tokenisation regex: a non-empty string that compiles and whose matches
    cover PATTERN_PROBE completely with non-empty pieces. Text no match covers would be dropped silently by the
    encoder ("(a+)+$" encodes most text to 0 tokens), and an empty match panics tiktoken's Rust code."""
    import regex  # tiktoken's own dependency: the same \p{L} and possessive-quantifier syntax as its engine

    if not isinstance(pattern, str) or not pattern:
        raise TokenizerError("the BPE split 'pattern' must be a non-empty regular expression")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise TokenizerError(f"the BPE split 'pattern' is {len(pattern)} characters, over {MAX_PATTERN_CHARS}")
    try:
        compiled = regex.compile(pattern)
        matches = list(compiled.finditer(PATTERN_PROBE, timeout=2.0))
    except (regex.error, TimeoutError, OverflowError, ValueError) as e:
        raise TokenizerError(f"the BPE split 'pattern' is not a usable regular expression ({e})") from None
    covered = 0
    for m in matches:
        if m.start() != covered or m.end() == m.start():
            gap = PATTERN_PROBE[covered : max(m.start(), covered + 1)]
            problem = "matches the empty string" if m.end() == m.start() else f"skips the text {gap!r}"
            raise TokenizerError(
                f"the BPE split 'pattern' {problem} at offset {covered} of a probe text, so encoding would drop "
                "text; every character must fall in some match"
            )
        covered = m.end()
    if covered != len(PATTERN_PROBE):
        raise TokenizerError(
            f"the BPE split 'pattern' skips the text {PATTERN_PROBE[covered:covered + 12]!r} at offset {covered} of "
            "a probe text, so encoding would drop text; every character must fall in some match"
        )
    return pattern


def _rust_panic(e: BaseException) -> bool:
    """True for pyo3's PanicException, which derives from BaseException (not Exception)."""
    return type(e).__name__ == "PanicException"


def cut_at_safe_boundaries(text: str, chunk_chars: int) -> list[str]:
    """Pieces of about `chunk_chars` characters whose concatenation is `text`, each ending with a newline that
    precedes an ASCII letter; a part without such a newline stays whole."""
    if chunk_chars <= 0:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}")
    pieces: list[str] = []
    start = 0
    while len(text) - start > chunk_chars:
        m = _SAFE_CUT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start : m.end()])
        start = m.end()
    if start < len(text) or not pieces:
        pieces.append(text[start:])
    return pieces


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(
        self,
        ranks: Sequence[bytes],
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = CHAT_SPECIAL_TOKENS,
    ) -> None:
        ranks = [bytes(r) for r in ranks]
        if any(not r for r in ranks) or len(set(ranks)) != len(ranks):
            raise TokenizerError("BPE ranks must be distinct non-empty byte strings")
        if not {bytes([b]) for b in range(256)} <= set(ranks):
            raise TokenizerError("BPE ranks must include all 256 single bytes (byte-level BPE)")
        if len(set(special_tokens)) != len(special_tokens):
            raise TokenizerError("special token names must be distinct")
        specials = {name: len(ranks) + i for i, name in enumerate(special_tokens)}
        super().__init__(specials)
        self.ranks = ranks
        self.pattern = check_pattern(pattern)
        try:
            self._enc = tiktoken.Encoding(
                name=f"embergpt-bpe-{len(ranks)}",
                pat_str=pattern,
                mergeable_ranks={r: i for i, r in enumerate(ranks)},
                special_tokens=specials,
            )
        except Exception as e:  # tiktoken reports a bad regex in various ways
            raise TokenizerError(f"cannot build the BPE encoder ({type(e).__name__}: {e})") from None

    @classmethod
    def train(cls, text: str, vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN) -> BPETokenizer:
        """Learn merges on `text` with rustbpe until the vocabulary (specials included) has `vocab_size` ids.

        A small corpus may run out of pairs to merge first; the vocabulary is then smaller."""
        import rustbpe

        if not isinstance(vocab_size, int) or not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be an integer in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] (256 bytes + "
                f"{len(CHAT_SPECIAL_TOKENS)} special tokens at least), got {vocab_size!r}"
            )
        if not text:
            raise TokenizerError("cannot train a BPE tokenizer on empty text")
        check_pattern(pattern)
        trainer = rustbpe.Tokenizer()
        # Many pieces let rustbpe count in parallel; safe cuts keep the counts those of the whole text.
        pieces = cut_at_safe_boundaries(text, 1 << 16) if pattern == GPT4_SPLIT_PATTERN else [text]
        trainer.train_from_iterator(iter(pieces), vocab_size - len(CHAT_SPECIAL_TOKENS), pattern=pattern)
        by_rank = sorted(trainer.get_mergeable_ranks(), key=lambda item: item[1])
        if [rank for _, rank in by_rank] != list(range(len(by_rank))):
            raise TokenizerError("rustbpe returned non-contiguous ranks")  # would break the id layout
        return cls([bytes(b) for b, _ in by_rank], pattern=trainer.get_pattern())

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encoding_chunks(self, text: str, chunk_chars: int) -> list[str]:
        """Cut `text` into pieces that encode independently to exactly the ids of the whole."""
        if self.pattern != GPT4_SPLIT_PATTERN:
            return [text]
        return cut_at_safe_boundaries(text, chunk_chars)

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        try:
            if allow_special:
                return self._enc.encode(text, allowed_special="all", disallowed_special=())
            return self._enc.encode_ordinary(text)
        except BaseException as e:
            if _rust_panic(e):  # a pattern that passed check_pattern's probe but matches empty on this text
                raise TokenizerError(f"this tokenizer's split pattern cannot encode the text ({e})") from None
            raise

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        threads = os.cpu_count() or 1
        try:
            if allow_special:
                return self._enc.encode_batch(
                    list(texts), num_threads=threads, allowed_special="all", disallowed_special=()
                )
            return self._enc.encode_ordinary_batch(list(texts), num_threads=threads)
        except BaseException as e:
            if _rust_panic(e):
                raise TokenizerError(f"this tokenizer's split pattern cannot encode the text ({e})") from None
            raise

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        ids = ids if isinstance(ids, list) else list(ids)
        try:
            return self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError):
            bad = next((i for i in ids if not _is_id(i, self.vocab_size)), ids)
            raise TokenizerError(
                f"token id {bad!r} is not in this tokenizer's range 0..{self.vocab_size - 1}"
            ) from None

    def token_bytes(self, token_id: int) -> bytes:
        try:
            return self._enc.decode_single_token_bytes(token_id)
        except (KeyError, OverflowError, TypeError):
            raise TokenizerError(
                f"token id {token_id!r} is not in this tokenizer's range 0..{self.vocab_size - 1}"
            ) from None

    def _payload(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "ranks": [base64.b64encode(r).decode("ascii") for r in self.ranks],
            "special_tokens": self.special_tokens,
        }

    @classmethod
    def from_payload(cls, doc: dict[str, Any]) -> BPETokenizer:
        """The tokenizer a file describes; raises TokenizerError when the fields do not fit together."""
        pattern, encoded, specials = doc["pattern"], doc["ranks"], doc["special_tokens"]
        if not isinstance(pattern, str) or not isinstance(encoded, list) or not isinstance(specials, dict):
            raise TokenizerError("'pattern' must be a string, 'ranks' a list and 'special_tokens' an object")
        try:
            ranks = [base64.b64decode(r, validate=True) for r in encoded]
        except (binascii.Error, TypeError, ValueError):
            raise TokenizerError("'ranks' must be base64 strings") from None
        by_id = sorted(specials.items(), key=lambda item: item[1] if isinstance(item[1], int) else -1)
        if [i for _, i in by_id] != list(range(len(ranks), len(ranks) + len(by_id))):
            raise TokenizerError(f"special token ids must follow the {len(ranks)} ranks contiguously")
        return cls(ranks, pattern=pattern, special_tokens=[name for name, _ in by_id])


def _is_id(value: object, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size
