"""Tokenizers: text <-> ids, saved as one JSON file whose sha256 checkpoints record.

CharTokenizer.from_text(text, unk=False)     one id per character, plus <|bos|> (and <unk>)
BPETokenizer.train(text, vocab_size)         byte-level BPE (GPT-4 split pattern), rustbpe + tiktoken
load_tokenizer(path)                         either kind, from the kind recorded in the file
train_tokenizer(source, kind, vocab_size)    what `embergpt tokenizer train` does
"""

from __future__ import annotations

import os
from typing import Any

from embergpt.bounded_json import loads
from embergpt.errors import TokenizerError
from embergpt.input_files import read_regular_file
from embergpt.tokenizer.base import BOS, CHAT_SPECIAL_TOKENS, FILE_FORMAT, FILE_VERSION, Tokenizer
from embergpt.tokenizer.bpe import GPT4_SPLIT_PATTERN, BPETokenizer
from embergpt.tokenizer.char import UNK, CharTokenizer
from embergpt.tokenizer.training import TrainReport, bytes_per_token, heldout_split, train_tokenizer

__all__ = [
    "BOS",
    "CHAT_SPECIAL_TOKENS",
    "GPT4_SPLIT_PATTERN",
    "UNK",
    "BPETokenizer",
    "CharTokenizer",
    "Tokenizer",
    "TrainReport",
    "bytes_per_token",
    "heldout_split",
    "TokenizerError",
    "load_tokenizer",
    "tokenizer_from_json",
    "train_tokenizer",
]

MAX_FILE_BYTES = 64 << 20  # a 1M-id BPE file is about 16 MB
MAX_DEPTH = 4  # {"ranks": [...], "special_tokens": {...}}
_KINDS: dict[str, Any] = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_json(data: bytes | str, origin: str = "tokenizer JSON") -> Tokenizer:
    """A tokenizer from the contents of a tokenizer file; `origin` names it in errors."""
    advice = "re-create it with `embergpt tokenizer train`"
    doc = loads(data, what=origin, max_bytes=MAX_FILE_BYTES, max_depth=MAX_DEPTH, advice=advice, error=TokenizerError)
    if not isinstance(doc, dict) or doc.get("format") != FILE_FORMAT:
        raise TokenizerError(f'{origin} is not an embergpt tokenizer file (no "format": "{FILE_FORMAT}")')
    if doc.get("version") != FILE_VERSION:
        raise TokenizerError(
            f"{origin} has tokenizer file version {doc.get('version')!r}; this embergpt reads version "
            f"{FILE_VERSION}; {advice}"
        )
    kind = doc.get("kind")
    if kind not in _KINDS:
        raise TokenizerError(f"{origin} has unknown kind {kind!r} (known: {', '.join(_KINDS)}); {advice}")
    try:
        return _KINDS[kind].from_payload(doc)
    except KeyError as e:
        raise TokenizerError(f"{origin} lacks the field {e}; {advice}") from None
    except (TypeError, ValueError) as e:  # a field of the wrong type that the kind's checks did not name
        raise TokenizerError(f"{origin} is invalid ({e}); {advice}") from None
    except TokenizerError as e:
        raise TokenizerError(f"{origin} is invalid: {e}; {advice}") from None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer file written by `Tokenizer.save`, of either kind. Only a regular file of at most
    MAX_FILE_BYTES is read (a FIFO or /dev/zero is refused at once). Raises TokenizerError."""
    data = read_regular_file(path, max_bytes=MAX_FILE_BYTES, what="tokenizer file", error=TokenizerError)
    return tokenizer_from_json(data, origin=f"tokenizer file {os.fspath(path)!r}")
