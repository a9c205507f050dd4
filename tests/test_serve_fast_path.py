"""The server runs the one decode core in its fast configuration: compiled continuous batching against the eager
engine, and a real `embergpt serve` in its default configuration (compiled, warmed up before traffic)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import torch
from serve_fixtures import ServerProcess, make_model

from embergpt.inference.batch import Request
from embergpt.inference.engine import Engine
from embergpt.inference.scheduler import Scheduler
from embergpt.sampling import SamplingParams

# (prompt, max tokens, params, seed, submitted after the first request's k-th token)
SPECS = [
    ([1, 2, 3], 60, SamplingParams(0.0), 0, None),
    ([5], 40, SamplingParams(1.0, top_k=8), 11, 3),
    ([7, 7, 7, 7, 7, 7], 55, SamplingParams(0.8, top_p=0.9, repetition_penalty=1.3), 12, 6),
    ([9, 1], 30, SamplingParams(1.0, min_p=0.05), 13, 9),
    ([2] * 20, 25, SamplingParams(0.0), 14, 12),
]


def run_scheduler(model: torch.nn.Module, compile_mode: str) -> tuple[list[list[int]], list[list[float]], dict]:
    """SPECS through a compiled or eager scheduler, joining while others run (batch sizes 1..4 and back)."""
    scheduler = Scheduler(Engine(model, compile=compile_mode), max_batch=4, warm_up=True)
    assert scheduler.ready.wait(300)
    tokens: list[list[int]] = [[] for _ in SPECS]
    logprobs: list[list[float]] = [[] for _ in SPECS]
    ended = [threading.Event() for _ in SPECS]
    requests: list[Request] = []

    def sink_of(k: int):
        def sink(events):
            for e in events:
                if e.kind == "token":
                    tokens[k].append(e.token)
                    logprobs[k].append(e.logprob)
                    for j, spec in enumerate(SPECS):
                        if spec[4] == len(tokens[0]) and k == 0:
                            scheduler.submit(requests[j])  # joins the running batch
                else:
                    ended[k].set()

        return sink

    for k, (prompt, n, params, seed, _) in enumerate(SPECS):
        requests.append(Request(list(prompt), n, params, seed, logprobs=0, sink=sink_of(k)))
    try:
        scheduler.submit(requests[0])
        assert all(e.wait(300) for e in ended)
        return tokens, logprobs, scheduler.stats()
    finally:
        scheduler.close()


@pytest.mark.slow
def test_compiled_continuous_batching_equals_the_eager_engine() -> None:
    from torch._dynamo.utils import counters

    model = make_model(40, seed=3)
    torch._dynamo.reset()
    counters.clear()
    compiled_tokens, compiled_lp, stats = run_scheduler(model, "default")
    # warm-up met row buckets 1, 2, 4 and windows 128 and 192 (the whole cache): one graph for a lone row, one for
    # more (without the cache's spare position, the whole-cache window compiled two more)
    assert counters["stats"]["unique_graphs"] == 2
    eager_tokens, eager_lp, _ = run_scheduler(model, "off")
    assert stats["decode_rows"] / stats["decode_steps"] > 1.5  # requests really shared steps
    # each request's tokens are those the library engine gives it alone (row seeded with its seed)
    engine = Engine(model)
    alone = [engine.generate(p, n, params, seed)[0] for p, n, params, seed, _ in SPECS]
    assert eager_tokens == alone
    assert compiled_tokens == alone
    # and the compiled step's probabilities are the eager step's, across batch-size changes, joins and leaves
    for a, b in zip(compiled_lp, eager_lp):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


@pytest.mark.slow
def test_default_server_warms_up_then_answers_like_the_engine(tmp_path) -> None:
    """`embergpt serve` with its default configuration: /api/health says ready, and tokens equal the library's."""
    from serve_fixtures import write_checkpoint

    from embergpt.inference.defaults import serve_defaults
    from embergpt.inference.loading import load_for_inference

    checkpoint = write_checkpoint(tmp_path / "run")
    env = {"EMBERGPT_COMPILE": "auto", "EMBERGPT_CACHE": str(tmp_path / "cache")}
    server = ServerProcess(checkpoint, ["--rate-limit-rps", "0"], env=env)
    try:
        start = time.monotonic()
        health = httpx.get(server.url + "/api/health").json()
        # a request sent while warming up waits for the warm-up: never lost, never a 5xx
        req = {"prompt": "ROMEO:", "max_tokens": 30, "temperature": 0.9, "seed": 5}
        r = httpx.post(server.url + "/api/generate", json=req, timeout=300)
        assert r.status_code == 200, r.text
        health = httpx.get(server.url + "/api/health").json()
        compile_mode, dtype = serve_defaults(torch.device("cpu"))
        assert health["ready"] is True and health["compile"] == compile_mode and health["dtype"] == dtype
        assert 0 < health["time_to_ready_seconds"] < 300 and time.monotonic() - start < 300
        loaded = load_for_inference(checkpoint, "cpu", dtype)
        engine = loaded.engine()
        ids = engine.encode(req["prompt"])
        want = engine.generate(ids, 30, SamplingParams(0.9), 5, [loaded.tokenizer.bos_id])[0]
        assert [t["id"] for t in r.json()["tokens"]] == want
    finally:
        server.stop()
