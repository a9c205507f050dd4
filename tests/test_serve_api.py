"""The JSON API of `embergpt serve`, against a real server process on 127.0.0.1 with a real tiny checkpoint;
plus the pieces underneath it (scheduler, rate limiter, settings, stop strings, chat template) in-process."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from serve_fixtures import ServerProcess, make_model, reference_generate

from embergpt.chat.template import render_chat
from embergpt.inference.batch import Request
from embergpt.inference.scheduler import Scheduler
from embergpt.inference.stop_text import StopText
from embergpt.run_dir import latest_checkpoint
from embergpt.sampling import SamplingParams
from embergpt.serve.rate_limit import TokenBucketLimiter
from embergpt.serve.settings import ServeSettings, resolve_settings
from embergpt.tokenizer import BPETokenizer, CharTokenizer

pytest_plugins = ["serve_fixtures"]


def post(url: str, path: str, body: dict | str | bytes, **kw) -> httpx.Response:
    if isinstance(body, dict):
        return httpx.post(url + path, json=body, timeout=60, **kw)
    headers = {"content-type": "application/json", **kw.pop("headers", {})}
    return httpx.post(url + path, content=body, headers=headers, timeout=60, **kw)


def prompt_ids(tok, text: str) -> list[int]:
    return [tok.bos_id, *tok.encode(text)]


def walk_strings(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk_strings(v)


# ---- info, health, metrics


def test_health_reports_model_checkpoint_and_tokenizer_without_paths(server_url, serve_checkpoint, served):
    health = httpx.get(server_url + "/api/health").json()
    assert health["status"] == "ok" and health["uptime_seconds"] >= 0
    config = json.loads((serve_checkpoint / "config.json").read_text())
    for name in ("vocab_size", "sequence_len", "n_layer", "n_head", "n_kv_head", "n_embd"):
        assert health["model"][name] == config[name]
    metadata = json.loads((serve_checkpoint / "metadata.json").read_text())
    assert health["checkpoint"] == {"basename": "final", "sha256": metadata["files"]["model.safetensors"]}
    assert health["tokenizer"] == {"kind": "char", "sha256": served.tokenizer.sha256}
    for path in ("/api/health", "/api/info", "/api/metrics", "/v1/models"):
        response = httpx.get(server_url + path)
        assert response.status_code == 200
        assert str(serve_checkpoint.parent) not in response.text
        for s in walk_strings(response.json()):
            assert not s.startswith("/") and not s.startswith("~"), (path, s)


def test_info_describes_model_and_tokenizer(server_url, served):
    info = httpx.get(server_url + "/api/info").json()
    assert info["model"]["kind"] == "gpt"
    assert info["model"]["num_params"] == sum(p.numel() for p in served.model.parameters())
    assert info["tokenizer"]["kind"] == "char"
    assert info["tokenizer"]["vocab_size"] == served.tokenizer.vocab_size
    assert info["vocab_match"] is (served.tokenizer.vocab_size == served.config.vocab_size) is True
    assert info["limits"]["max_prompt_bytes"] == 8192 and info["limits"]["max_output_tokens"] == 512


def test_metrics_come_from_the_runs_metrics_jsonl(server_url, serve_checkpoint):
    body = httpx.get(server_url + "/api/metrics").json()
    rows = [json.loads(line) for line in (serve_checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
    assert body["source"] == "metrics.jsonl"
    assert [p["step"] for p in body["points"]] == [r["step"] for r in rows]
    assert [p.get("val_loss") for p in body["points"]] == [r.get("val_loss") for r in rows]


# ---- generation


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generate_matches_an_uncached_reference(server_url, served, temperature):
    prompt, seed = "ROMEO:\nWhat", 1234
    req = {"prompt": prompt, "max_tokens": 40, "temperature": temperature, "seed": seed}
    r = post(server_url, "/api/generate", req)
    assert r.status_code == 200, r.text
    body = r.json()
    tok = served.tokenizer
    ids = prompt_ids(tok, prompt)
    want = reference_generate(served.model, ids, 40, SamplingParams(temperature), seed, frozenset({tok.bos_id}))
    got = [t["id"] for t in body["tokens"]]
    stop = [t for t in want if t == tok.bos_id]
    assert got + stop == want
    assert body["generated"] == tok.decode(got)
    assert [t["text"] for t in body["tokens"]] == [tok.decode([i]) for i in got]
    assert [t["id"] for t in body["prompt_tokens"]] == ids
    n_in, n_out = len(ids), len(want)
    assert body["usage"] == {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
    assert body["finish_reason"] == ("stop" if stop else "length")


def test_same_seed_same_output_other_seed_other_output(server_url):
    req = {"prompt": "First Citizen:", "max_tokens": 30, "temperature": 1.0, "top_k": 20, "top_p": 0.95}
    a = post(server_url, "/api/generate", {**req, "seed": 7}).json()["generated"]
    b = post(server_url, "/api/generate", {**req, "seed": 7}).json()["generated"]
    c = post(server_url, "/api/generate", {**req, "seed": 8}).json()["generated"]
    assert a == b and a != c


def read_sse(response: httpx.Response) -> list[dict]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(json.loads(line[6:]))
    return events


def test_stream_yields_the_same_tokens_as_the_plain_response(server_url):
    req = {"prompt": "KING:", "max_tokens": 25, "temperature": 0.8, "seed": 99}
    plain = post(server_url, "/api/generate", req).json()
    with httpx.stream("POST", server_url + "/api/generate/stream", json=req, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = read_sse(r)
    assert events[0]["type"] == "start" and events[0]["prompt_tokens"] == plain["prompt_tokens"]
    tokens = [e for e in events if e["type"] == "token"]
    fields = ("id", "text", "logprob", "forced")
    assert [{k: e[k] for k in fields} for e in tokens] == plain["tokens"]
    done = events[-1]
    assert done["type"] == "done" and done["usage"] == plain["usage"]
    assert "".join(e["delta"] for e in tokens) + done["delta"] == done["generated"] == plain["generated"]
    with httpx.stream("POST", server_url + "/api/generate", json={**req, "stream": True}, timeout=60) as r:
        assert [e for e in read_sse(r) if e["type"] == "token"] == tokens


def test_attention_matches_the_models_own_attention(server_url, served):
    req = {"prompt": "To be", "max_tokens": 12, "temperature": 0.0, "return_attention": True}
    body = post(server_url, "/api/generate", req).json()
    ids = [t["id"] for t in body["prompt_tokens"]] + [t["id"] for t in body["tokens"]]
    cfg = served.config
    assert [(a["layer"], a["head"]) for a in body["attention"]] == [
        (layer, head) for layer in range(cfg.n_layer) for head in range(cfg.n_head)
    ]
    with torch.no_grad():
        _, att = served.model(torch.tensor([ids]), return_attention=True)
    for a in body["attention"]:
        weights = a["weights"]
        assert [len(row) for row in weights] == list(range(1, len(ids) + 1))
        expected = att[a["layer"]][0, a["head"]]
        for i, row in enumerate(weights):
            assert sum(row) == pytest.approx(1.0, abs=1e-3)
            assert torch.allclose(torch.tensor(row, dtype=torch.float32), expected[i, : i + 1], atol=1e-4)


def test_concurrent_requests_match_their_solo_runs(server_url):
    """Batching must not change results: greedy identical, seeded sampling identical up to float rounding."""
    reqs = [
        {"prompt": "ROMEO:", "max_tokens": 60, "temperature": 0.0},
        {"prompt": "JULIET:\nO", "max_tokens": 45, "temperature": 0.9, "seed": 5},
        {"prompt": "A", "max_tokens": 70, "temperature": 1.2, "top_k": 10, "seed": 6},
        {"prompt": "Now is the winter", "max_tokens": 50, "temperature": 0.7, "top_p": 0.9, "seed": 7},
    ]
    def ids(req):  # the logprobs of batched rows differ from solo ones by float rounding; the tokens may not
        return [t["id"] for t in post(server_url, "/api/generate", req).json()["tokens"]]

    solo = [ids(r) for r in reqs]
    before = httpx.get(server_url + "/api/health").json()["scheduler"]
    with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
        together = list(pool.map(ids, reqs))
    after = httpx.get(server_url + "/api/health").json()["scheduler"]
    assert together == solo
    steps = after["decode_steps"] - before["decode_steps"]
    tokens = after["tokens_generated"] - before["tokens_generated"]
    assert steps < tokens - len(reqs), "the requests were never decoded in one batch"


def test_client_disconnect_cancels_the_generation(server_url):
    def counters():
        return httpx.get(server_url + "/api/health").json()["scheduler"]

    req = {"prompt": "KING:", "max_tokens": 180, "temperature": 0.0}
    start = time.perf_counter()
    full = post(server_url, "/api/generate", req).json()
    full_seconds = time.perf_counter() - start
    # greedy, this prompt never samples the stop token: unless cancelled, the generation makes all 180 tokens
    assert full["finish_reason"] == "length" and full["usage"]["completion_tokens"] == req["max_tokens"]
    for streaming in (True, False):
        before = counters()
        if streaming:
            with httpx.stream("POST", server_url + "/api/generate/stream", json=req, timeout=60) as r:
                for line in r.iter_lines():
                    if '"type":"token"' in line:
                        break  # leaving the block closes the connection
        else:
            # the client gives up after a small fraction of the time the whole generation takes
            timeout = httpx.Timeout(60, read=min(0.05, full_seconds / 10))
            with pytest.raises(httpx.TimeoutException):
                httpx.post(server_url + "/api/generate", json=req, timeout=timeout)
        deadline = time.monotonic() + 10
        while counters()["cancelled"] == before["cancelled"] and time.monotonic() < deadline:
            time.sleep(0.02)
        after = counters()
        assert after["cancelled"] == before["cancelled"] + 1
        assert after["tokens_generated"] - before["tokens_generated"] < req["max_tokens"]
        assert after["active"] == 0


# ---- limits and errors


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"] == body["error"].lower(), body
    return body


def test_prompt_too_large_counts_utf8_bytes(server_url):
    prompt = "é" * 4097  # 4097 characters, 8194 bytes
    r = post(server_url, "/api/generate", {"prompt": prompt, "max_tokens": 1})
    body = error_of(r)
    assert (r.status_code, body["error"]) == (400, "prompt_too_large")
    assert (body["max_bytes"], body["actual_bytes"]) == (8192, 8194)


def test_max_tokens_out_of_range(server_url):
    for requested in (0, 513, 10**30):
        r = post(server_url, "/api/generate", {"prompt": "A", "max_tokens": requested})
        assert r.status_code == 400
        body = error_of(r)
        assert (body["error"], body["max_allowed"], body["requested"]) == ("max_tokens_out_of_range", 512, requested)


def test_body_too_large(server_url):
    r = post(server_url, "/api/generate", {"prompt": "a" * 8192, "max_tokens": 1, "pad": "x" * 5000})
    assert r.status_code == 413 and error_of(r)["error"] == "body_too_large"


def test_context_limit(server_url):
    r = post(server_url, "/api/generate", {"prompt": "a" * 150, "max_tokens": 100})
    body = error_of(r)
    assert r.status_code == 400 and body["error"] == "context_length_exceeded"
    assert (body["prompt_tokens"], body["sequence_len"], body["max_tokens_allowed"]) == (151, 192, 41)


@pytest.mark.parametrize(
    "body, status, kind",
    [
        (b'{"prompt": "hi", "max_tokens": ', 400, "malformed_json"),
        (b"[1, 2, 3]", 422, "invalid_request"),
        (b'{"prompt": 5}', 422, "invalid_request"),
        (b'{"prompt": "hi", "temperature": "hot"}', 422, "invalid_request"),
        (b'{"prompt": "hi", "temperature": NaN}', 422, "invalid_request"),
        (b'{"prompt": "hi", "temperature": -1}', 422, "invalid_request"),
        (b'{"prompt": "hi", "top_p": 0}', 422, "invalid_request"),
        (b'{"prompt": "hi", "seed": 1e400}', 422, "invalid_request"),
        (b'{"prompt": "hi", "seed": 123456789012345678901234567890}', 422, "invalid_request"),
        (b'{"prompt": "\\ud800"}', 422, "invalid_request"),
        (b'{"prompt": "\xff\xfe"}', 400, "malformed_json"),
        (b'{"prompt": "snowman \\u2603"}', 400, "unencodable_prompt"),
        (b'{"prompt": "emoji \xf0\x9f\x94\xa5"}', 400, "unencodable_prompt"),
    ],
)
def test_bad_input_gets_a_json_4xx(server_url, body, status, kind):
    r = post(server_url, "/api/generate", body)
    assert (r.status_code, error_of(r)["error"]) == (status, kind), r.text


def test_framework_errors_have_the_same_shape(server_url):
    r = httpx.get(server_url + "/no/such/page")
    assert r.status_code == 404 and error_of(r)["error"] == "not_found"
    r = httpx.get(server_url + "/api/generate")
    assert r.status_code == 405 and error_of(r)["error"] == "method_not_allowed"
    r = httpx.post(server_url + "/api/generate", content=b'{"prompt": "hi"}')  # no content type
    assert r.status_code == 415 and error_of(r)["error"] == "unsupported_media_type"


def test_web_ui_and_openapi_are_served(server_url):
    page = httpx.get(server_url + "/")
    assert page.status_code == 200 and "<canvas" in page.text and "http" not in page.text.replace("http-equiv", "")
    for asset in ("/static/app.js", "/static/style.css"):
        assert httpx.get(server_url + asset).status_code == 200
    spec = httpx.get(server_url + "/openapi.json").json()
    paths = {"/api/generate", "/api/generate/stream", "/api/info", "/api/health", "/v1/completions"}
    assert paths | {"/v1/chat/completions", "/v1/models"} <= set(spec["paths"])


@pytest.fixture(scope="module")
def limited_server(serve_checkpoint):
    env = {"EMBERGPT_MAX_PROMPT_BYTES": "64", "EMBERGPT_MAX_OUTPUT_TOKENS": "100", "EMBERGPT_MAX_ATTENTION_TOKENS": "8"}
    proc = ServerProcess(
        serve_checkpoint, ["--rate-limit-rps", "0.5", "--rate-limit-burst", "3", "--max-output-tokens", "8"], env
    )
    yield proc
    proc.stop()


def test_limits_come_from_flags_over_env_vars(limited_server):
    limits = httpx.get(limited_server.url + "/api/info").json()["limits"]
    assert limits["max_output_tokens"] == 8  # flag 8 beats env 100
    assert limits["max_prompt_bytes"] == 64  # env only
    assert limits["max_body_bytes"] == 64 + 4096
    r = post(limited_server.url, "/api/generate", {"prompt": "x" * 65, "max_tokens": 1})
    assert error_of(r)["error"] == "prompt_too_large" and r.json()["max_bytes"] == 64
    r = post(limited_server.url, "/api/generate", {"prompt": "abcdefg", "max_tokens": 1, "return_attention": True})
    assert r.status_code == 400 and error_of(r)["error"] == "attention_too_large"


def test_rate_limit_charges_valid_requests_only(limited_server):
    url = limited_server.url
    for _ in range(6):  # invalid requests are free
        r = post(url, "/api/generate", {"prompt": "A", "max_tokens": 9})
        assert r.status_code == 400 and error_of(r)["error"] == "max_tokens_out_of_range"
        assert post(url, "/api/generate", b"{").status_code == 400
    for _ in range(3):  # the burst
        assert post(url, "/api/generate", {"prompt": "A", "max_tokens": 1}).status_code == 200
    r = post(url, "/v1/completions", {"prompt": "A", "max_tokens": 1})
    assert r.status_code == 429
    body = r.json()["error"]  # OpenAI's shape on /v1
    assert (body["code"], body["type"]) == ("rate_limited", "rate_limit_error") and 0 < body["retry_after_seconds"] <= 2
    assert int(r.headers["Retry-After"]) >= 1
    for path in ("/api/health", "/api/info"):  # exempt
        assert all(httpx.get(url + path).status_code == 200 for _ in range(5))
    time.sleep(body["retry_after_seconds"] + 0.05)
    assert post(url, "/api/generate", {"prompt": "A", "max_tokens": 1}).status_code == 200


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "embergpt", "serve", "--checkpoint", str(tmp_path / "missing"), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("embergpt serve: error:") and len(r.stderr.strip().splitlines()) == 1
    r = subprocess.run(
        [sys.executable, "-m", "embergpt", "serve", "--load-latest", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"EMBERGPT_MAX_OUTPUT_TOKENS": "lots", "PATH": ""},
    )
    assert r.returncode == 2 and "EMBERGPT_MAX_OUTPUT_TOKENS" in r.stderr


# ---- the pieces, in-process


def test_latest_checkpoint_prefers_final_then_the_highest_step(tmp_path):
    for name in ("step-000100", "interrupted-step-150", "step-000120"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "step-000900").mkdir()  # incomplete: no config.json
    assert latest_checkpoint(tmp_path).name == "interrupted-step-150"
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "config.json").write_text("{}")
    assert latest_checkpoint(tmp_path).name == "final"


def test_scheduler_joins_new_requests_into_a_running_batch():
    model = make_model(40, seed=3)
    specs = [
        ([1, 2, 3], 70, SamplingParams(0.0), 0),
        ([5], 40, SamplingParams(1.0, top_k=8), 11),
        ([7, 7, 7, 7, 7, 7], 55, SamplingParams(0.8, top_p=0.9, repetition_penalty=1.3), 12),
        ([9, 1], 30, SamplingParams(1.0, min_p=0.05), 13),
        ([2] * 20, 25, SamplingParams(0.5), 14),  # more jobs than rows: waits for a free slot
    ]
    scheduler = Scheduler(model, max_batch=4)
    log: list[tuple[int, str]] = []  # (job, event kind) in the order the worker reported them
    ended = [threading.Event() for _ in specs]

    def sink_of(k: int):
        def sink(events):
            for e in events:
                first_token = e.kind == "token" and (k, "token") not in log
                log.append((k, e.kind))
                if first_token and k + 1 < len(specs):
                    scheduler.submit(jobs[k + 1])  # job k is decoding now: the next one arrives mid-batch
                if e.kind != "token":
                    ended[k].set()

        return sink

    generated: dict[int, list[int]] = {k: [] for k in range(len(specs))}

    def collecting(k: int):
        sink = sink_of(k)

        def both(events):
            generated[k].extend(e.token for e in events if e.kind == "token")
            sink(events)

        return both

    jobs = [Request(list(p), n, params, seed, sink=collecting(k)) for k, (p, n, params, seed) in enumerate(specs)]
    try:
        before = scheduler.stats()
        scheduler.submit(jobs[0])
        assert all(e.wait(60) for e in ended)
        stats = scheduler.stats()
        assert sorted(entry for entry in log if entry[1] != "token") == [(k, "done") for k in range(len(specs))]
        first_token = {k: log.index((k, "token")) for k in range(len(specs))}
        done = {k: log.index((k, "done")) for k in range(len(specs))}
        for k in range(3):  # job k+1 joined while job k was running, and job k went on decoding beside it
            assert first_token[k + 1] < done[k]
            assert (k, "token") in log[first_token[k + 1] :]
        assert first_token[4] > min(done[k] for k in range(4))  # the fifth job waited for a row to free up
        assert stats["prefill_forwards"] - before["prefill_forwards"] == len(specs)  # each prefilled on arrival
        rows, steps = (stats[n] - before[n] for n in ("decode_rows", "decode_steps"))
        assert rows / steps > 2  # and decoded together
        assert stats["active"] == 0
        with torch.inference_mode():
            for k, (p, n, params, seed) in enumerate(specs):
                assert generated[k] == reference_generate(model, p, n, params, seed)
    finally:
        scheduler.close()


def test_scheduler_never_samples_ids_beyond_the_tokenizer():
    model = make_model(50, seed=4)
    scheduler = Scheduler(model, max_batch=2, vocab_limit=10)
    try:
        for seed in range(3):
            assert max(scheduler.generate([1, 2], 60, SamplingParams(2.0), seed)) < 10
    finally:
        scheduler.close()


def test_token_bucket():
    now = [0.0]
    limiter = TokenBucketLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0  # buckets are per client
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0 and limiter.acquire("a") > 0
    now[0] += 100
    assert limiter.peek("a") == 3.0


def test_settings_resolution():
    assert resolve_settings({}, {}) == ServeSettings()
    env = {"EMBERGPT_MAX_PROMPT_BYTES": "100", "EMBERGPT_RATE_LIMIT_RPS": "0"}
    s = resolve_settings({"max_prompt_bytes": 50, "max_batch": None}, env)
    assert (s.max_prompt_bytes, s.rate_limit_rps, s.rate_limited, s.max_batch) == (50, 0.0, False, 16)
    with pytest.raises(ValueError, match="EMBERGPT_MAX_BATCH"):
        resolve_settings({}, {"EMBERGPT_MAX_BATCH": "many"})
    with pytest.raises(ValueError, match="max_output_tokens"):
        ServeSettings(max_output_tokens=0)


@settings(max_examples=200, deadline=None)
@given(
    text=st.text(alphabet="abc\nXY:", max_size=40),
    stops=st.lists(st.text(alphabet="abc\nX:", min_size=1, max_size=4), max_size=3),
)
def test_stop_strings_cut_the_output_where_the_first_one_completes(text, stops):
    tok = CharTokenizer.from_text("abc\nXY:")
    out = StopText(tok, stops)
    emitted = ""
    for i in tok.encode(text):
        emitted += out.push(i)
        if out.stopped:
            break
    emitted += out.finish()
    # Generation stops at the first stop string to be completed (the longest, if several end together).
    found = [(text.find(s) + len(s), text.find(s)) for s in stops if s in text]
    expected = text
    if found:
        end = min(e for e, _ in found)
        expected = text[: min(start for e, start in found if e == end)]
    assert emitted == expected == out.text
    assert out.stopped == bool(found)


def test_chat_templates():
    char = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ :\n")
    plain = render_chat([("system", "be nice"), ("user", "hi"), ("assistant", "hello"), ("user", "bye")], char)
    assert plain.template == "plain" and plain.ids[0] == char.bos_id
    assert char.decode(plain.ids[1:]) == "System: be nice\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
    bpe = BPETokenizer.train("hello world, how are you? " * 50, vocab_size=300)
    special = render_chat([("system", "be nice"), ("user", "hi"), ("assistant", "yo"), ("user", "<|bos|>")], bpe)
    assert special.template == "special"
    assert bpe.decode(special.ids) == (
        "<|bos|><|user_start|>be nice\n\nhi<|user_end|><|assistant_start|>yo<|assistant_end|>"
        "<|user_start|><|bos|><|user_end|><|assistant_start|>"
    )
    assert special.ids.count(bpe.bos_id) == 1  # a typed special-token name stays text
    assert bpe.special_tokens["<|assistant_end|>"] in special.stop_ids
    with pytest.raises(ValueError, match="role"):
        render_chat([("tool", "x")], bpe)


def test_cache_view_writes_land_in_the_base_cache():
    from embergpt.inference.kv_cache import KVCache, SlotView

    model = make_model(30, seed=5)
    base = KVCache.for_model(model.config, batch_size=3)
    full = KVCache.for_model(model.config, batch_size=1)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        model(ids, kv_cache=SlotView(base, 1, 1, window=64))
        model(ids, kv_cache=full)
    assert base.pos.tolist() == [0, 5, 0]
    assert torch.equal(base.k[:, 1, :, :5], full.k[:, 0, :, :5]) and base.k[:, [0, 2]].abs().sum() == 0


def test_a_failing_row_does_not_disturb_the_batch():
    model = make_model(40, seed=6)
    with torch.no_grad():
        model.transformer.wte.weight[39] = float("nan")  # a prompt holding id 39 gets NaN logits
    good = [([3, 4, 5], 60, SamplingParams(0.9), 21), ([8, 1], 50, SamplingParams(1.0, top_k=12), 22)]
    bad = ([1, 39], 20, SamplingParams(1.0), 1)
    # ids >= 39 are never sampled, so only the bad prompt ever reads the NaN row
    scheduler = Scheduler(model, max_batch=4, autostart=False, vocab_limit=39)
    solo = Scheduler(model, max_batch=1, vocab_limit=39)
    try:
        # all queued before the worker starts: one batch, the failing row between the good ones (its slot is
        # then refilled by moving the last good row's cache)
        futures = [scheduler.generate_async(*job) for job in (good[0], bad, good[1])]
        scheduler.start()
        with pytest.raises(RuntimeError, match="sampling failed"):
            futures[1].result(timeout=60)
        results = [futures[0].result(timeout=60), futures[2].result(timeout=60)]
        stats = scheduler.stats()
        assert stats["errors"] == 1 and stats["completed"] == 2
        assert stats["prefill_forwards"] == 1  # the failing row was sampled in the same batch as the good ones
        assert stats["decode_rows"] / stats["decode_steps"] > 1  # and the good rows went on decoding together
        assert results == [solo.generate(*job) for job in good]
        assert [len(r) for r in results] == [60, 50]
    finally:
        scheduler.close()
        solo.close()


def test_prompts_arriving_together_are_prefilled_in_one_forward():
    model = make_model(40, seed=7)
    jobs = [
        ([1] * 3, 20, SamplingParams(0.0), 0),
        ([2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], 25, SamplingParams(1.0), 1),
        ([13], 30, SamplingParams(0.7, top_k=5), 2),
        ([14, 15, 16, 17, 18], 15, SamplingParams(1.1, top_p=0.8), 3),
    ]
    solo = Scheduler(model, max_batch=1)
    batched = Scheduler(model, max_batch=8, autostart=False)
    try:
        alone = [solo.generate(*job) for job in jobs]
        futures = [batched.generate_async(*job) for job in jobs]  # all queued before the worker starts
        batched.start()
        together = [f.result(timeout=60) for f in futures]
        assert together == alone
        assert batched.stats()["prefill_forwards"] == 1 and solo.stats()["prefill_forwards"] == len(jobs)
        with torch.inference_mode():
            assert together == [reference_generate(model, *job) for job in jobs]
    finally:
        solo.close()
        batched.close()


@pytest.mark.parametrize("kind", ["bigram", "multi-head"])
def test_ladder_models_are_served_without_a_cache(kind):
    from embergpt.config import GPTConfig
    from embergpt.ladder import LADDER

    torch.manual_seed(8)
    model = LADDER[kind](GPTConfig(vocab_size=30, sequence_len=48, n_layer=1, n_head=2, n_kv_head=2, n_embd=16))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)  # peaked, input-dependent distributions
    model.eval()
    scheduler = Scheduler(model, max_batch=4, autostart=False)
    try:
        assert scheduler.cache is None
        jobs = [([1, 2, 3], 20, SamplingParams(0.0), 0), ([4], 30, SamplingParams(1.0), 1)]
        jobs.append(([5, 6], 10, SamplingParams(0.7), 2))
        futures = [scheduler.generate_async(*job) for job in jobs]
        scheduler.start()
        with torch.inference_mode():
            assert [f.result(timeout=60) for f in futures] == [reference_generate(model, *job) for job in jobs]
    finally:
        scheduler.close()


def test_a_request_ending_on_a_stop_string_counts_as_completed(server_url):
    before = httpx.get(server_url + "/api/health").json()["scheduler"]
    full = post(server_url, "/api/generate", {"prompt": "KING:", "max_tokens": 40, "temperature": 0.0}).json()
    stop = full["generated"][5:8]  # text the greedy output surely contains
    r = post(server_url, "/api/generate", {"prompt": "KING:", "max_tokens": 40, "temperature": 0.0, "stop": [stop]})
    body = r.json()
    assert body["finish_reason"] == "stop" and body["generated"] == full["generated"][: full["generated"].index(stop)]
    after = httpx.get(server_url + "/api/health").json()["scheduler"]
    assert after["completed"] - before["completed"] == 2 and after["cancelled"] == before["cancelled"]


def test_info_describes_a_bigram_as_what_it_is():
    from fastapi.testclient import TestClient

    from embergpt.config import GPTConfig
    from embergpt.ladder import LADDER
    from embergpt.serve.app import create_app
    from embergpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdef")
    model = LADDER["bigram"](GPTConfig(vocab_size=tok.vocab_size, sequence_len=32, n_layer=4, n_head=4, n_kv_head=4,
                                       n_embd=16))
    with TestClient(create_app(model, tok, ServeSettings(rate_limit_rps=0, compile="off"))) as client:
        shape = client.get("/api/info").json()["model"]["structure"]
    assert shape == {"layers": 0, "heads": 0, "kv_heads": 0, "width": tok.vocab_size, "attention": False}
