"""`embergpt bench serve`: concurrent streaming clients against a real `embergpt serve` on 127.0.0.1.

The server runs the benchmark shape (PRESETS["bench"]) with random weights and a byte-level BPE tokenizer trained
on the bundled Shakespeare (8192 ids, the model's vocabulary), rate limiting off. For each client count (1, 4, 16
by default) the clients stream /api/generate/stream requests back to back for --seconds; a round measures
aggregate tokens per second, time to first token (TTFT) and errors. Client counts are interleaved over --repeats
rounds and the medians reported, since the machine is shared and noisy.

The goal (continuous batching at work): 16 clients reach >= 6x the aggregate tok/s of 1 client, with p99 TTFT < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from embergpt.bench import parse_positive_ints
from embergpt.errors import EmbergptError

TOKEN_EVENT = 'data: {"type":"token"'
MAX_OUTPUT_TOKENS = 4096  # the server is started with --max-output-tokens this large
SPEEDUP_GOAL = 6.0
TTFT_P99_GOAL_MS = 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of one round per client count")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per client count; medians are reported")
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in tokens")
    parser.add_argument("--device", default=None, help="the server's device (default: best available)")
    parser.add_argument("--threads", type=int, default=None, help="the server's torch CPU threads (default: torch's)")


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def build_checkpoint(root: Path) -> tuple[Path, list[str]]:
    """The bench-shape checkpoint (random weights, BPE tokenizer) and prompt texts for the clients."""
    import torch

    from embergpt.checkpoint import save_checkpoint
    from embergpt.config import PRESETS
    from embergpt.data import load_text
    from embergpt.model import GPT
    from embergpt.tokenizer import BPETokenizer

    text = load_text("builtin:shakespeare")
    config = PRESETS["bench"]
    tok = BPETokenizer.train(text, config.vocab_size)
    torch.manual_seed(0)
    model = GPT(config.replace(vocab_size=max(config.vocab_size, tok.vocab_size)))
    path = save_checkpoint(model, root / "bench-serve", tokenizer=tok)
    return path, [text[i : i + 4000] for i in range(0, 64 * 9973, 9973)]


def _prompt(tok: Any, text: str, n_tokens: int) -> str:
    return tok.decode(tok.encode(text)[:n_tokens])


def start_server(
    checkpoint: Path, max_batch: int, device: str | None, threads: int | None = None
) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "embergpt", "serve", "--checkpoint", str(checkpoint), "--port", "0"]
    cmd += ["--rate-limit-rps", "0", "--max-batch", str(max_batch), "--max-output-tokens", "4096"]
    if device:
        cmd += ["--device", device]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].strip()
    proc.kill()
    proc.wait()
    # one line: the server's own last words (its one-line error, or the last line of a traceback)
    last = next((line.strip() for line in reversed(lines) if line.strip()), "no output")
    raise EmbergptError(f"the benchmark server did not start (exit code {proc.returncode}): {last}")


async def _one_request(client: Any, body: dict[str, Any]) -> tuple[float, int]:
    """(seconds to the first token, tokens) of one streamed generation; raises on any error."""
    start = time.perf_counter()
    first, tokens, done = None, 0, False
    async with client.stream("POST", "/api/generate/stream", json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if line.startswith(TOKEN_EVENT):  # the hot path: no JSON parsing, the client shares the CPU
                tokens += 1
                if first is None:
                    first = time.perf_counter() - start
                continue
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "done":
                done = True
            elif event["type"] == "error":
                raise RuntimeError(event.get("message", "error event"))
    if not done or first is None:
        raise RuntimeError("the stream ended early")
    return first, tokens


async def run_round(url: str, clients: int, seconds: float, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    import httpx

    ttfts: list[float] = []
    errors: list[str] = []
    counts = {"tokens": 0, "requests": 0}
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/api/health")).json()["scheduler"]
        start = time.perf_counter()
        deadline = start + seconds

        async def worker(i: int) -> None:
            k = 0
            while time.perf_counter() < deadline:
                body = {
                    "prompt": prompts[(i * 7 + k) % len(prompts)],
                    "max_tokens": max_tokens,
                    "temperature": 1.0,
                    "seed": i * 1000 + k,
                }
                k += 1
                try:
                    first, tokens = await _one_request(client, body)
                except Exception as e:
                    errors.append(f"{type(e).__name__}: {e}")
                    continue
                ttfts.append(first)
                counts["tokens"] += tokens
                counts["requests"] += 1

        await asyncio.gather(*(worker(i) for i in range(clients)))
        wall = time.perf_counter() - start
        after = (await client.get("/api/health")).json()["scheduler"]
    steps = after["decode_steps"] - before["decode_steps"]
    rows = after["decode_rows"] - before["decode_rows"]
    return {
        "clients": clients,
        "requests": counts["requests"],
        "tokens": counts["tokens"],
        "seconds": round(wall, 3),
        "tok_per_s": counts["tokens"] / wall,
        "ttft_ms_p50": percentile(ttfts, 0.5) * 1000,
        "ttft_ms_p99": percentile(ttfts, 0.99) * 1000,
        "mean_batch": rows / steps if steps else 0.0,
        "errors": len(errors),
        "error_samples": errors[:3],
    }


def _median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    med = lambda key: statistics.median(r[key] for r in rounds)
    return {
        "clients": rounds[0]["clients"],
        "tok_per_s": round(med("tok_per_s"), 1),
        "ttft_ms_p50": round(med("ttft_ms_p50"), 1),
        "ttft_ms_p99": round(med("ttft_ms_p99"), 1),
        "ttft_ms_p99_worst": round(max(r["ttft_ms_p99"] for r in rounds), 1),
        "mean_batch": round(med("mean_batch"), 2),
        "requests": sum(r["requests"] for r in rounds),
        "tokens": sum(r["tokens"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "error_samples": [e for r in rounds for e in r["error_samples"]][:3],
        "rounds_tok_per_s": [round(r["tok_per_s"], 1) for r in rounds],
    }


def require_measurements(levels: list[dict[str, Any]]) -> None:
    """A one-line EmbergptError if some client count completed no request at all: it measured nothing, so the
    benchmark failed (rather than report zeros and NaNs as a result)."""
    for r in levels:
        if r["requests"] == 0:
            sample = " ".join(str(r["error_samples"][0]).split())[:200] if r["error_samples"] else "none recorded"
            raise EmbergptError(
                f"every request with {r['clients']} client(s) failed, so nothing was measured "
                f"({r['errors']} errors; first: {sample})"
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    # every flag is checked before the checkpoint and the server are built, so a typo fails at once
    levels = sorted(set(parse_positive_ints(args.clients, "--clients", "1,4,16")))
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise ValueError(f"--seconds must be a finite number > 0, got {args.seconds}")
    for flag, value in (("--repeats", args.repeats), ("--prompt-tokens", args.prompt_tokens)):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not 1 <= args.max_tokens <= MAX_OUTPUT_TOKENS:
        raise ValueError(f"--max-tokens must be between 1 and {MAX_OUTPUT_TOKENS}, got {args.max_tokens}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if args.device:
        from embergpt.device import resolve_device

        resolve_device(args.device)  # the server would refuse it too, but only after the checkpoint is built
    with tempfile.TemporaryDirectory(prefix="embergpt-bench-serve-") as tmp:
        checkpoint, texts = build_checkpoint(Path(tmp))
        from embergpt.tokenizer import load_tokenizer

        tok = load_tokenizer(checkpoint / "tokenizer.json")
        prompts = [_prompt(tok, t, args.prompt_tokens) for t in texts]
        proc, url = start_server(checkpoint, max(levels), args.device, args.threads)
        try:
            info = None
            for _ in range(100):  # wait until it answers
                try:
                    info = httpx.get(url + "/api/info", timeout=5).json()
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            if info is None:
                raise EmbergptError(f"the benchmark server at {url} never answered /api/info")
            warm = min(2.0, args.seconds)
            asyncio.run(run_round(url, max(levels), warm, prompts, args.max_tokens))  # warm-up
            rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
            for _ in range(args.repeats):
                for c in levels:  # interleaved, so slow phases of a noisy machine hit every level alike
                    rounds[c].append(asyncio.run(run_round(url, c, args.seconds, prompts, args.max_tokens)))
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    results = [_median_round(rounds[c]) for c in levels]
    require_measurements(results)
    by_clients = {r["clients"]: r for r in results}
    out: dict[str, Any] = {
        "benchmark": "serve",
        "shape": "bench",
        "model": {k: info["model"][k] for k in ("n_layer", "n_head", "n_embd", "vocab_size", "sequence_len")},
        "tokenizer": {"kind": info["tokenizer"]["kind"], "vocab_size": info["tokenizer"]["vocab_size"]},
        "device": info["device"],
        "cpu_count": os.cpu_count(),
        "server_threads": args.threads,
        "max_tokens": args.max_tokens,
        "prompt_tokens": args.prompt_tokens,
        "seconds_per_round": args.seconds,
        "repeats": args.repeats,
        "levels": results,
    }
    lo, hi = levels[0], levels[-1]
    if lo != hi:
        speedup = by_clients[hi]["tok_per_s"] / by_clients[lo]["tok_per_s"]
        out[f"speedup_{hi}_vs_{lo}"] = round(speedup, 2)
        if (lo, hi) == (1, 16):
            out["goal"] = {
                "speedup_min": SPEEDUP_GOAL,
                "ttft_ms_p99_max": TTFT_P99_GOAL_MS,
                "speedup_met": speedup >= SPEEDUP_GOAL,
                "ttft_met": by_clients[16]["ttft_ms_p99"] < TTFT_P99_GOAL_MS,
                "errors": sum(r["errors"] for r in results),
            }
    return out
