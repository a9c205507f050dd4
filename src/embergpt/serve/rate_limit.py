"""A token-bucket rate limiter keyed by client (its IP address).

Each client has a bucket holding up to `burst` tokens, refilled at `rate` tokens per second; a request takes one.
A client that waited long enough starts with a full bucket again, so idle clients are forgotten (memory stays
bounded by the number of clients active in the last burst / rate seconds).

The key is `client_key(scope)`: the address of the connection's peer. Never a header such as X-Forwarded-For, which
any client can write: only when the peer is a proxy in --forwarded-allow-ips does uvicorn replace scope["client"]
with the client that proxy names (see embergpt.serve.server.uvicorn_config).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any


class TokenBucketLimiter:
    """limiter.acquire(key) -> 0.0 when allowed (a token is taken), else the seconds until one is available."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time of that count)
        self._lock = threading.Lock()
        self._last_prune = clock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, then = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - then) * self.rate)

    def acquire(self, key: str) -> float:
        """Take one token for `key`; returns 0.0 on success, else how long to wait (no token is taken)."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            tokens = self._tokens(key, now)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def peek(self, key: str) -> float:
        """Tokens `key` has now, without taking one."""
        with self._lock:
            return self._tokens(key, self._clock())

    def _prune(self, now: float) -> None:
        # A bucket that has refilled completely carries no information: drop it.
        full_after = self.burst / self.rate
        if now - self._last_prune < full_after:
            return
        self._last_prune = now
        self._buckets = {k: (t, ts) for k, (t, ts) in self._buckets.items() if now - ts < full_after}

    def __len__(self) -> int:
        return len(self._buckets)


def client_key(scope: Mapping[str, Any]) -> str:
    """The rate-limit key of an ASGI request: its peer's host ("unknown" for a peer without an address)."""
    client = scope.get("client")
    return str(client[0]) if client else "unknown"
