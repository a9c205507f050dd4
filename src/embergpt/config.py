"""Model configuration: a small validated dataclass, a JSON round trip and a few named presets."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def strict_from_dict(cls: Any, d: dict[str, Any]) -> Any:
    """cls(**d) for a dataclass, refusing keys that are not its fields (a typo or a newer file) by name."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    return cls(**d)


# Bounds on what a config file or a flag may say. Sizes are also checked against memory (embergpt.model_size);
# these only keep every later computation (shapes, parameter counts) in ordinary integer and float ranges.
MAX_DIMENSION = 1 << 24
MAX_ROPE_BASE = 1e10
MAX_SOFTCAP = 1e4


def _number_in(
    name: str, value: Any, low: float, high: float, text: str, low_open: bool = False, high_open: bool = False
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"GPTConfig.{name} must be a finite number in {text}, got {value!r}")


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 256
    sequence_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4  # 1 = multi-query, n_head = multi-head, in between = grouped-query
    n_embd: int = 128
    dropout: float = 0.0
    rope_base: float = 10000.0
    softcap: float | None = 15.0  # logits -> c * tanh(logits / c); None disables
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("vocab_size", "sequence_len", "n_layer", "n_head", "n_kv_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_DIMENSION:
                raise ValueError(f"GPTConfig.{name} must be an integer in [1, {MAX_DIMENSION:,}], got {value!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.n_head % self.n_kv_head != 0:
            raise ValueError(
                f"GPTConfig.n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig head_dim = n_embd / n_head = {self.head_dim} must be even (RoPE rotates pairs)"
            )
        # Floats from a file or a flag: a number (not a bool or a string), finite, in range. NaN fails every
        # comparison, so each range check is written as "not inside".
        _number_in("dropout", self.dropout, 0.0, 1.0, "[0, 1)", high_open=True)
        _number_in("rope_base", self.rope_base, 1.0, MAX_ROPE_BASE, f"(1, {MAX_ROPE_BASE:g}]", low_open=True)
        if self.softcap is not None:
            _number_in("softcap", self.softcap, 0.0, MAX_SOFTCAP, f"(0, {MAX_SOFTCAP:g}] or null", low_open=True)
        _number_in("norm_eps", self.norm_eps, 0.0, 1.0, "(0, 1]", low_open=True)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        return strict_from_dict(cls, d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        """A config from JSON text, bounded in size and depth, checked to be an object (ValueError otherwise)."""
        from embergpt.bounded_json import expect_object, loads

        return cls.from_dict(expect_object(loads(text, what="model config", max_bytes=1 << 20), "model config"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> GPTConfig:
        """The config in a JSON file: only a regular file of at most 1 MiB (InputFileError otherwise)."""
        from embergpt.input_files import read_regular_text

        return cls.from_json(read_regular_text(path, max_bytes=1 << 20, what="model config file"))

    def replace(self, **changes: Any) -> GPTConfig:
        return dataclasses.replace(self, **changes)


# Named presets. vocab_size is a placeholder where the tokenizer decides it (train overrides it).
PRESETS: dict[str, GPTConfig] = {
    # for tests: runs in milliseconds
    "tiny": GPTConfig(vocab_size=64, sequence_len=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32),
    # the check-features shape (nanochat-rs's check_features example)
    "check": GPTConfig(vocab_size=256, sequence_len=128, n_layer=4, n_head=4, n_kv_head=2, n_embd=128),
    # char-level tiny Shakespeare on a laptop CPU (the `make demo` model)
    "shakespeare-char": GPTConfig(
        vocab_size=66, sequence_len=128, n_layer=4, n_head=4, n_kv_head=4, n_embd=128
    ),
    # the benchmark shape used by `embergpt bench train|decode|serve`
    "bench": GPTConfig(vocab_size=8192, sequence_len=1536, n_layer=6, n_head=6, n_kv_head=6, n_embd=384),
    # GPT-2-small sized
    "d12": GPTConfig(vocab_size=50304, sequence_len=1024, n_layer=12, n_head=12, n_kv_head=12, n_embd=768),
}


def get_preset(name: str) -> GPTConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
