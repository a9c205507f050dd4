"""Server limits, each settable by a command-line flag or an environment variable (the flag wins).

    limit                   flag                      env var                            default
    max_prompt_bytes        --max-prompt-bytes        EMBERGPT_MAX_PROMPT_BYTES          8192
    max_output_tokens       --max-output-tokens       EMBERGPT_MAX_OUTPUT_TOKENS         512
    rate_limit_rps          --rate-limit-rps          EMBERGPT_RATE_LIMIT_RPS            5 (0 disables the limit)
    rate_limit_burst        --rate-limit-burst        EMBERGPT_RATE_LIMIT_BURST          10
    max_batch               --max-batch               EMBERGPT_MAX_BATCH                 16 (rows decoded together)
    max_queue               --max-queue               EMBERGPT_MAX_QUEUE                 256 (waiting for a row)
    max_attention_tokens    --max-attention-tokens    EMBERGPT_MAX_ATTENTION_TOKENS      256
  HTTP (enforced per connection by embergpt.serve.http_limits, before the app sees a request):
    max_header_bytes        --max-header-bytes        EMBERGPT_MAX_HEADER_BYTES          32768 (request line + headers)
    header_timeout          --header-timeout          EMBERGPT_HEADER_TIMEOUT            10 s to receive the headers
    body_timeout            --body-timeout            EMBERGPT_BODY_TIMEOUT              15 s to receive the body
    keep_alive_timeout      --keep-alive-timeout      EMBERGPT_KEEP_ALIVE_TIMEOUT        5 s idle between requests
    send_timeout            --send-timeout            EMBERGPT_SEND_TIMEOUT              30 s stalled on a non-reader
    max_connections         --max-connections         EMBERGPT_MAX_CONNECTIONS           512 open connections
    max_connections_per_client  --max-connections-per-client  EMBERGPT_MAX_CONNECTIONS_PER_CLIENT  64 (a proxy: no cap)
    forwarded_allow_ips     --forwarded-allow-ips     EMBERGPT_FORWARDED_ALLOW_IPS       "" (trust no proxy)
  The decode core:
    compile                 --compile                 EMBERGPT_COMPILE                   auto (off|default|max-autotune)
    dtype                   --dtype                   EMBERGPT_DTYPE                     auto (float32|bfloat16|float16)
  The OpenAI API:
    accept_any_model        --accept-any-model        EMBERGPT_ACCEPT_ANY_MODEL          off (another `model`: 404)
  "auto" is the configuration `embergpt bench serve` measured fastest for the device (embergpt.inference.defaults).

Each number has an upper bound (MAXIMA) far above any real server: 2**63 from a typo or a hostile environment is a
one-line error, not a tensor shape. The request body is capped at max_prompt_bytes + 4 KiB (BODY_OVERHEAD_BYTES).
X-Forwarded-For is believed only from a peer in forwarded_allow_ips (comma-separated addresses or networks, or "*");
otherwise the rate limit keys on the connection's own peer address. uvicorn's FORWARDED_ALLOW_IPS variable is not read.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embergpt.whole_numbers import is_finite_number, is_whole

BODY_OVERHEAD_BYTES = 4096
ENV_PREFIX = "EMBERGPT_"
MAX_SECONDS = 86400.0  # a timeout of more than a day is a typo
NOT_LIMITS = ("forwarded_allow_ips", "compile", "dtype", "accept_any_model")
COMPILE_CHOICES = ("auto", "off", "default", "max-autotune")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")  # settings that are not published as limits in /api/info
# The largest value each number may take: far above any real server, low enough that a typo (or 2**63 from a hostile
# environment) is refused here instead of reaching a tensor shape, a buffer size or a socket table.
MAXIMA: dict[str, float] = {
    "max_prompt_bytes": 64 << 20,
    "max_output_tokens": 1_000_000,
    "rate_limit_rps": 1_000_000.0,
    "rate_limit_burst": 1_000_000,
    "max_batch": 4096,
    "max_queue": 1_000_000,
    "max_attention_tokens": 65536,
    "max_header_bytes": 1 << 20,
    "max_connections": 100_000,
    "max_connections_per_client": 100_000,
}


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
    max_header_bytes: int = 32768
    header_timeout: float = 10.0
    body_timeout: float = 15.0
    keep_alive_timeout: float = 5.0
    send_timeout: float = 30.0
    max_connections: int = 512
    max_connections_per_client: int = 64
    forwarded_allow_ips: str = ""
    compile: str = "auto"
    dtype: str = "auto"
    accept_any_model: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "float":
                _check_float(f.name, value)
            elif f.type == "int" and not is_whole(value, 1, MAXIMA[f.name]):
                raise ValueError(f"{f.name} must be a whole number in [1, {MAXIMA[f.name]:,}], got {value!r}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be at least 1024, got {self.max_header_bytes}")
        trusted_proxies(self.forwarded_allow_ips)  # raises on a malformed entry
        if self.compile not in COMPILE_CHOICES:
            raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, got {self.compile!r}")
        if not isinstance(self.accept_any_model, bool):
            raise ValueError(f"accept_any_model must be true or false, got {self.accept_any_model!r}")
        if self.dtype not in DTYPE_CHOICES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {self.dtype!r}")

    @property
    def max_body_bytes(self) -> int:
        return self.max_prompt_bytes + BODY_OVERHEAD_BYTES

    @property
    def rate_limited(self) -> bool:
        return self.rate_limit_rps > 0

    @property
    def trusted_proxies(self) -> list[str]:
        """The peers whose X-Forwarded-For is believed (empty: none)."""
        return trusted_proxies(self.forwarded_allow_ips)

    def to_dict(self) -> dict[str, Any]:
        limits = {k: v for k, v in dataclasses.asdict(self).items() if k not in NOT_LIMITS}
        return {**limits, "max_body_bytes": self.max_body_bytes}


def _check_float(name: str, value: Any) -> None:
    ok = is_finite_number(value)
    if name == "rate_limit_rps":
        if not (ok and 0 <= value <= MAXIMA[name]):
            raise ValueError(
                f"{name} must be a number in [0, {MAXIMA[name]:,.0f}] (0 disables rate limiting), got {value!r}"
            )
    elif not (ok and 0 < value <= MAX_SECONDS):
        raise ValueError(f"{name} must be a number of seconds in (0, {MAX_SECONDS:g}], got {value!r}")


def trusted_proxies(text: str) -> list[str]:
    """'10.0.0.1, 192.168.0.0/16' -> ['10.0.0.1', '192.168.0.0/16']; '*' trusts every peer; '' none."""
    if not isinstance(text, str):
        raise ValueError(f"forwarded_allow_ips must be a string, got {text!r}")
    entries = [e.strip() for e in text.split(",") if e.strip()]
    for entry in entries:
        if entry == "*":
            continue
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ValueError(
                f"forwarded_allow_ips: {entry!r} is not an IP address or network; give the proxy's address, "
                "e.g. 127.0.0.1 or 10.0.0.0/8"
            ) from None
    return entries


def env_var(name: str) -> str:
    """The environment variable of a setting: max_prompt_bytes -> EMBERGPT_MAX_PROMPT_BYTES."""
    return ENV_PREFIX + name.upper()


def flag(name: str) -> str:
    """The command-line flag of a setting: max_prompt_bytes -> --max-prompt-bytes."""
    return "--" + name.replace("_", "-")


_KINDS: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}
_BOOLS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.strip().lower() not in _BOOLS:
            raise ValueError(f"environment variable {env_var(name)}={text!r} is not 1/true/yes/on or 0/false/no/off; "
                             "fix or unset it")
        return _BOOLS[text.strip().lower()]
    try:
        return kind(text.strip())
    except ValueError:
        what = "a number" if kind is float else "an integer"
        raise ValueError(f"environment variable {env_var(name)}={text!r} is not {what}; fix or unset it") from None


def resolve_settings(flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> ServeSettings:
    """Settings from flags (None = not given) over environment variables over the defaults."""
    flags = flags or {}
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServeSettings):
        kind = _KINDS.get(str(f.type), str)
        if flags.get(f.name) is not None:
            values[f.name] = flags[f.name]
        elif environ.get(env_var(f.name), "").strip():
            values[f.name] = _parse(f.name, environ[env_var(f.name)], kind)
    try:
        return ServeSettings(**values)
    except ValueError as e:
        # Name where the bad value came from: a flag or an environment variable.
        for f in dataclasses.fields(ServeSettings):
            if str(e).split(maxsplit=1)[0].rstrip(":") == f.name:
                source = flag(f.name) if flags.get(f.name) is not None else env_var(f.name)
                raise ValueError(f"{source}: {e}") from None
        raise


def setting_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ServeSettings)]
