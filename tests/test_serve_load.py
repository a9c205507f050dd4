"""A bounded load test: 32 concurrent streaming clients for 30 s against the real server (rate limit off)."""

from __future__ import annotations

import asyncio
import json
import random
import time

import httpx
import pytest

pytest_plugins = ["serve_fixtures"]

CLIENTS = 32
SECONDS = 30.0
PROMPTS = ["ROMEO:", "JULIET:\nO Romeo", "First Citizen:\n", "To be, or not to be", "KING RICHARD III:\nNow is"]


async def stream_generate(client: httpx.AsyncClient, rng: random.Random) -> int:
    """One streamed /api/generate; returns the tokens received; raises on anything unexpected."""
    body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(8, 64), "temperature": 0.8}
    body["seed"] = rng.randrange(100)
    tokens, done = 0, None
    async with client.stream("POST", "/api/generate/stream", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            assert event["type"] != "error", event
            tokens += event["type"] == "token"
            if event["type"] == "done":
                done = event
    assert done is not None, "the stream ended without a done event"
    if done["finish_reason"] == "length":
        assert done["usage"]["completion_tokens"] == tokens == body["max_tokens"], done
    else:  # the stop token (BOS) ended the row: counted in the usage, never streamed as a token
        assert done["finish_reason"] == "stop", done
        assert done["usage"]["completion_tokens"] == tokens + 1 <= body["max_tokens"], done
    return tokens


async def chat(client: httpx.AsyncClient, rng: random.Random) -> int:
    body = {"messages": [{"role": "user", "content": rng.choice(PROMPTS)}], "max_tokens": rng.randint(4, 32)}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["completion_tokens"]


async def run_load(url: str) -> dict:
    stats = {"requests": 0, "tokens": 0, "errors": [], "health_ms": []}
    deadline = time.monotonic() + SECONDS
    limits = httpx.Limits(max_connections=CLIENTS + 4)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(i: int) -> None:
            rng = random.Random(i)
            while time.monotonic() < deadline:
                try:
                    call = chat if rng.random() < 0.2 else stream_generate
                    n = await call(client, rng)  # (not `+= await`: that would read the total before awaiting)
                    stats["tokens"] += n
                    stats["requests"] += 1
                except Exception as e:  # every failure is counted and reported
                    stats["errors"].append(f"{type(e).__name__}: {e}")

        async def watch_health() -> None:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                r = await client.get("/api/health")
                stats["health_ms"].append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
                await asyncio.sleep(0.5)

        await asyncio.gather(watch_health(), *(worker(i) for i in range(CLIENTS)))
    return stats


@pytest.mark.slow
def test_32_clients_for_30_seconds_without_errors(server_url):
    before = httpx.get(server_url + "/api/health").json()["scheduler"]
    stats = asyncio.run(run_load(server_url))
    after = httpx.get(server_url + "/api/health").json()["scheduler"]
    assert stats["errors"] == [], stats["errors"][:5]
    assert stats["requests"] > CLIENTS and stats["tokens"] > 0
    assert after["errors"] == before["errors"]
    assert after["active"] == 0 and after["queued"] == 0
    # the clients were batched together (deltas: the session's server has served other tests before)
    steps, rows = after["decode_steps"] - before["decode_steps"], after["decode_rows"] - before["decode_rows"]
    assert steps > 0 and rows / steps > 1, (rows, steps)
    assert len(stats["health_ms"]) >= SECONDS / 1.0  # the event loop kept answering while the model worked
    print(
        f"\n{stats['requests']} requests, {stats['tokens']} tokens in {SECONDS:.0f} s, mean batch {rows / steps:.1f}; "
        f"health p50 {sorted(stats['health_ms'])[len(stats['health_ms']) // 2]:.1f} ms"
    )
