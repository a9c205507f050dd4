"""How big a model is, from its config alone, and whether it fits in this machine's memory: checked before
anything is allocated, so that `n_layer: 10**9` in a config file or on the command line is a one-line refusal
in milliseconds, not minutes of allocation followed by "out of memory".

    parameter_count(kind, config)   exact parameter count of embergpt.model.GPT / the teaching ladder's models
    buffer_count(kind, config)      elements of their non-parameter buffers (the RoPE tables)
    available_memory()              bytes this process may still allocate (MemAvailable, capped by the cgroup)
    check_fits(...)                 raise `error` when the estimate exceeds what is available
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from embergpt.config import GPTConfig


def _gpt(c: GPTConfig) -> int:
    d = c.head_dim
    attention = c.n_embd * (c.n_head * d) + 2 * c.n_embd * (c.n_kv_head * d) + c.n_embd * c.n_embd
    mlp = 8 * c.n_embd * c.n_embd
    return 2 * c.vocab_size * c.n_embd + c.n_layer * (attention + mlp)


def _bigram(c: GPTConfig) -> int:
    return c.vocab_size * c.vocab_size


def _single_head(c: GPTConfig) -> int:
    C = c.n_embd
    return 2 * c.vocab_size * C + c.sequence_len * C + 3 * C * C


def _multi_head(c: GPTConfig) -> int:
    C = c.n_embd
    return 2 * c.vocab_size * C + c.sequence_len * C + 12 * C * C


PARAMETER_COUNTS: dict[str, Callable[[GPTConfig], int]] = {
    "gpt": _gpt,
    "bigram": _bigram,
    "single-head": _single_head,
    "multi-head": _multi_head,
}


def parameter_count(kind: str, config: GPTConfig) -> int:
    """The number of parameters the model of `kind` built from `config` has (Python ints: no overflow)."""
    if kind not in PARAMETER_COUNTS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(PARAMETER_COUNTS)}")
    return PARAMETER_COUNTS[kind](config)


def buffer_count(kind: str, config: GPTConfig) -> int:
    """Elements of the model's buffers: GPT's cos and sin tables, [sequence_len, head_dim / 2] each."""
    return config.sequence_len * config.head_dim if kind == "gpt" else 0


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # "max" (no limit) is not a number


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, lowered by a cgroup (container) limit when one is
    set; the total physical memory where /proc is missing."""
    candidates = [_meminfo_available()]
    limit, used = _read_int("/sys/fs/cgroup/memory.max"), _read_int("/sys/fs/cgroup/memory.current")
    if limit is not None and used is not None:
        candidates.append(max(0, limit - used))
    found = [c for c in candidates if c is not None]
    if found:
        return min(found)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse on a guess


def activation_bytes(config: GPTConfig, batch_size: int) -> int:
    """A floor on the fp32 activations one training micro-step keeps for backward: per token, at least 8 vectors
    of width n_embd per layer (q, k, v, the attention output, the 4x MLP hidden) and 2 of width vocab_size
    (logits and their gradient). The real figure is higher; a floor never refuses a run that would fit."""
    per_token = config.n_layer * 8 * config.n_embd + 2 * config.vocab_size
    return batch_size * config.sequence_len * per_token * 4


def format_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_count(n: int) -> str:
    """A parameter count for people: 4,160 -> '4.2K', 123,456,789 -> '123.5M' (never '0.00M')."""
    for value, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= value:
            return f"{n / value:.1f}{suffix}"
    return str(n)


def check_fits(
    kind: str,
    config: GPTConfig,
    bytes_per_parameter: int,
    what: str,
    advice: str,
    error: type[Exception],
    extra_bytes: int = 0,
) -> int:
    """Refuse (raise `error`, one line) a model whose parameters (times `bytes_per_parameter`: 4 to hold fp32
    weights, ~16 to train them with AdamW) plus fp32 buffers plus `extra_bytes` (activations) exceed the memory
    available now. Returns the parameter count."""
    params = parameter_count(kind, config)
    need = params * bytes_per_parameter + buffer_count(kind, config) * 4 + extra_bytes
    have = available_memory()
    if need > have:
        raise error(
            f"{what}: a {kind} model of {format_count(params)} parameters needs about {format_bytes(need)}, "
            f"but {format_bytes(have)} of memory is available; {advice}"
        )
    return params
