"""Server limits, each settable by a command-line flag or an environment variable (the flag wins).

    limit                   flag                      env var                            default
    max_prompt_bytes        --max-prompt-bytes        EMBERGPT_MAX_PROMPT_BYTES          8192
    max_output_tokens       --max-output-tokens       EMBERGPT_MAX_OUTPUT_TOKENS         512
    rate_limit_rps          --rate-limit-rps          EMBERGPT_RATE_LIMIT_RPS            5 (0 disables the limit)
    rate_limit_burst        --rate-limit-burst        EMBERGPT_RATE_LIMIT_BURST          10
    max_batch               --max-batch               EMBERGPT_MAX_BATCH                 16 (rows decoded together)
    max_queue               --max-queue               EMBERGPT_MAX_QUEUE                 256 (waiting for a row)
    max_attention_tokens    --max-attention-tokens    EMBERGPT_MAX_ATTENTION_TOKENS      256

The request body is capped at max_prompt_bytes + 4 KiB (BODY_OVERHEAD_BYTES).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BODY_OVERHEAD_BYTES = 4096
ENV_PREFIX = "EMBERGPT_"


@dataclass(frozen=True)
class ServeSettings:
    """The limits of one server. Construct directly, or with `resolve_settings(flags, environ)`."""

    max_prompt_bytes: int = 8192
    max_output_tokens: int = 512
    rate_limit_rps: float = 5.0
    rate_limit_burst: int = 10
    max_batch: int = 16
    max_queue: int = 256
    max_attention_tokens: int = 256

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "rate_limit_rps":
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                ok = ok and math.isfinite(value) and value >= 0
                if not ok:
                    raise ValueError(f"{f.name} must be a finite number >= 0 (0 disables rate limiting), got {value!r}")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{f.name} must be a positive integer, got {value!r}")

    @property
    def max_body_bytes(self) -> int:
        return self.max_prompt_bytes + BODY_OVERHEAD_BYTES

    @property
    def rate_limited(self) -> bool:
        return self.rate_limit_rps > 0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "max_body_bytes": self.max_body_bytes}


def env_var(name: str) -> str:
    """The environment variable of a setting: max_prompt_bytes -> EMBERGPT_MAX_PROMPT_BYTES."""
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    """The command-line flag of a setting: max_prompt_bytes -> --max-prompt-bytes."""
    return "--" + name.replace("_", "-")


def _parse(name: str, text: str, kind: type) -> Any:
    try:
        return kind(text.strip())
    except ValueError:
        what = "a number" if kind is float else "an integer"
        raise ValueError(f"environment variable {env_var(name)}={text!r} is not {what}; fix or unset it") from None


def resolve_settings(
    flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> ServeSettings:
    """Settings from flags (None = not given) over environment variables over the defaults."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeSettings):
        kind = float if f.name == "rate_limit_rps" else int
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
        elif environ.get(env_var(f.name), "").strip():
            values[f.name] = _parse(f.name, environ[env_var(f.name)], kind)
    return ServeSettings(**values)


def setting_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServeSettings)]
