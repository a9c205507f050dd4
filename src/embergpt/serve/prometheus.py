"""Serving metrics in Prometheus' text format (GET /metrics), for a scraper or a dashboard.

    embergpt_requests_running              gauge      rows being decoded now (a request with n samples has n)
    embergpt_requests_waiting              gauge      requests waiting for a free row
    embergpt_prompt_tokens_total           counter    prompt tokens prefilled (once per request, whatever its n)
    embergpt_generation_tokens_total       counter    tokens generated
    embergpt_requests_finished_total       counter    requests ended, by outcome (completed, cancelled, error)
    embergpt_time_to_first_token_seconds   histogram  from a request's submission to its first token

The gauges and the token counter are the scheduler's; prompt tokens and time to first token are measured here,
by watching each request's events on their way to the event loop (`ServeStats.track`).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from embergpt.inference.batch import Event, Request

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Histogram:
    """Cumulative buckets (upper bounds in seconds), their sum and count; thread-safe."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.bounds, value)] += 1
            self.sum += value

    def lines(self, name: str) -> list[str]:
        with self._lock:
            counts, total = list(self.counts), self.sum
        out, cumulative = [], 0
        for bound, count in zip((*self.bounds, math.inf), counts):
            cumulative += count
            le = "+Inf" if bound == math.inf else repr(bound)
            out.append(f'{name}_bucket{{le="{le}"}} {cumulative}')
        out += [f"{name}_sum {total!r}", f"{name}_count {cumulative}"]
        return out


class ServeStats:
    """What the serve layer measures itself: prompt tokens and time to first token."""

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self._lock = threading.Lock()

    def track(self, request: Request) -> None:
        """Wrap `request.sink` (set, not yet submitted) to observe its first events; runs on the worker thread."""
        sink = request.sink
        if sink is None:
            return
        first = True

        def observed(events: list[Event]) -> None:
            nonlocal first
            if first and any(e.kind == "token" or (e.kind == "done" and e.finish_reason != "cancelled")
                             for e in events):
                first = False
                self.ttft.observe(max(0.0, time.monotonic() - request.submitted_at))
                with self._lock:
                    self.prompt_tokens += len(request.prompt_ids)
            sink(events)

        request.sink = observed


def render(stats: ServeStats, scheduler_stats: dict[str, Any]) -> str:
    """The metrics page: `# HELP`/`# TYPE` then samples, one per line."""
    s = scheduler_stats
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[str] | Callable[[], list[str]]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        lines.extend(samples() if callable(samples) else samples)

    metric("embergpt_requests_running", "gauge", "Rows being decoded now (a request with n samples has n).",
           [f"embergpt_requests_running {s['active']}"])
    metric("embergpt_requests_waiting", "gauge", "Requests waiting for a free row.",
           [f"embergpt_requests_waiting {s['queued']}"])
    metric("embergpt_prompt_tokens_total", "counter", "Prompt tokens prefilled.",
           [f"embergpt_prompt_tokens_total {stats.prompt_tokens}"])
    metric("embergpt_generation_tokens_total", "counter", "Tokens generated.",
           [f"embergpt_generation_tokens_total {s['tokens_generated']}"])
    metric("embergpt_requests_finished_total", "counter", "Requests ended, by outcome.",
           [f'embergpt_requests_finished_total{{outcome="{k}"}} {s[key]}'
            for k, key in (("completed", "completed"), ("cancelled", "cancelled"), ("error", "errors"))])
    metric("embergpt_time_to_first_token_seconds", "histogram",
           "Seconds from a request's submission to its first token.",
           lambda: stats.ttft.lines("embergpt_time_to_first_token_seconds"))
    return "\n".join(lines) + "\n"
