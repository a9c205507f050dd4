"""Tokenizers: text <-> ids, saved as one JSON file whose sha256 checkpoints record.

CharTokenizer.from_text(text, unk=False)     one id per character, plus <|bos|> (and <unk>)
BPETokenizer.train(text, vocab_size)         byte-level BPE (GPT-4 split pattern), rustbpe + tiktoken
load_tokenizer(path)                         either kind, from the kind recorded in the file
train_tokenizer(source, kind, vocab_size)    what `embergpt tokenizer train` does
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from embergpt.errors import TokenizerError
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

MAX_FILE_BYTES = 256 << 20
_KINDS: dict[str, Any] = {"char": CharTokenizer, "bpe": BPETokenizer}


def tokenizer_from_json(data: bytes | str, origin: str = "tokenizer JSON") -> Tokenizer:
    """A tokenizer from the contents of a tokenizer file; `origin` names it in errors."""
    advice = "re-create it with `embergpt tokenizer train`"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{origin} is not valid JSON ({e}); {advice}") from None
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
    except TokenizerError as e:
        raise TokenizerError(f"{origin} is invalid: {e}; {advice}") from None


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Read a tokenizer file written by `Tokenizer.save`, of either kind. Raises TokenizerError."""
    p = Path(path)
    try:
        if p.stat().st_size > MAX_FILE_BYTES:
            raise TokenizerError(f"tokenizer file {str(p)!r} is over {MAX_FILE_BYTES >> 20} MiB; is it one?")
        data = p.read_bytes()
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file {str(p)!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise TokenizerError(f"tokenizer path {str(p)!r} is a directory; pass the .json file inside it") from None
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer file {str(p)!r} ({e.strerror})") from None
    return tokenizer_from_json(data, origin=f"tokenizer file {str(p)!r}")
