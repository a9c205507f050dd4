"""The interface every tokenizer implements, and its one-file JSON format.

A tokenizer file is one JSON object, written canonically (sorted keys, ASCII, one item per line), so that the
sha256 of the file identifies the tokenizer; checkpoints record it:

    {"format": "embergpt-tokenizer", "version": 1, "kind": "char" | "bpe", ...kind-specific fields...}
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import Any

from embergpt.atomic_write import write_bytes_atomic
from embergpt.errors import TokenizerError

FILE_FORMAT = "embergpt-tokenizer"
FILE_VERSION = 1
BOS = "<|bos|>"
# nanochat's chat format; a BPE tokenizer that has all of them can render conversations.
CHAT_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
)


class Tokenizer(ABC):
    """text <-> token ids. Special tokens are named (`<|bos|>` at least) and only produced on request."""

    kind: str = ""

    def __init__(self, special_tokens: dict[str, int]) -> None:
        if BOS not in special_tokens:
            raise TokenizerError(f"a tokenizer needs a {BOS} special token; got {sorted(special_tokens)}")
        self._special_tokens = dict(special_tokens)

    # ---- vocabulary

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, special tokens included: every id is in [0, vocab_size)."""

    @property
    def special_tokens(self) -> dict[str, int]:
        """name -> id, e.g. {"<|bos|>": 65}."""
        return dict(self._special_tokens)

    @property
    def special_ids(self) -> dict[str, int]:
        """name -> id, as `special_tokens` (the decode core's tool forcing reads this name)."""
        return dict(self._special_tokens)

    @property
    def bos_id(self) -> int:
        return self._special_tokens[BOS]

    @property
    def chat_template(self) -> bool:
        """True when every special token of nanochat's chat format exists."""
        return all(name in self._special_tokens for name in CHAT_SPECIAL_TOKENS)

    @abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (a special token's name for a special token)."""

    # ---- encoding

    @abstractmethod
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids for `text`. Special-token names in the text are plain text unless `allow_special`."""

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """`encode` over many texts (possibly in parallel)."""
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def encoding_chunks(self, text: str, chunk_chars: int) -> list[str]:
        """Cut `text` into pieces of about `chunk_chars` that encode independently to exactly the ids of the whole
        (so a large corpus can be encoded piece by piece). The base class cannot know, so it does not cut."""
        return [text]

    @abstractmethod
    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids`: a prefix of a stream may end inside a multi-byte UTF-8 character."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text for `ids`; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ---- the file

    @abstractmethod
    def _payload(self) -> dict[str, Any]:
        """The kind-specific fields of the file."""

    def to_json_bytes(self) -> bytes:
        """The canonical file contents; `sha256` hashes exactly these bytes."""
        doc = {"format": FILE_FORMAT, "version": FILE_VERSION, "kind": self.kind, **self._payload()}
        return (json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=True) + "\n").encode("ascii")

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.to_json_bytes()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the tokenizer to one JSON file, atomically (a temporary file, then a rename)."""
        write_bytes_atomic(path, self.to_json_bytes())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, specials={len(self._special_tokens)})"


def check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    """`ids` as a list, or a TokenizerError naming the first id outside [0, vocab_size)."""
    out = ids if isinstance(ids, list) else list(ids)
    for i in out:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocab_size:
            raise TokenizerError(f"token id {i!r} is not in this tokenizer's range 0..{vocab_size - 1}")
    return out
