"""`embergpt bench serve`: a real `embergpt serve` against the engine alone and HF `generate()`, in one run.

The server runs the benchmark shape (PRESETS["bench"]) with random weights and a byte-level BPE tokenizer trained
on the bundled Shakespeare (8192 ids, the model's vocabulary), rate limiting off. For each serving configuration
of `--modes` (compile mode:dtype, e.g. `off:float32,default:float32,default:bfloat16`; default `auto`, what
`embergpt serve` runs on this device), the benchmark

1. starts the server twice and times process start -> `/api/health` "ready": first with an empty
   $EMBERGPT_CACHE (cold: every graph compiled), then again with the cache the first start left (warm);
2. builds the engine in this process in the same configuration (`load_for_inference` + `Engine(compile=...)`),
   and HF transformers' parameter-matched `LlamaForCausalLM` (bench/decode.py's baseline, float32);
3. measures, interleaved over `--repeats` turns so that a noisy machine hits every figure alike: the engine's
   `generate()` at batch 1 and batch N (N = the largest client count), HF `generate()` at batch 1 and N, and the
   streaming clients (each of `--clients`) sending /api/generate/stream requests back to back for `--seconds`.

Every tok/s is generated tokens / wall seconds, prefill included, greedy, with the same prompt length and
max_tokens: for the clients the tokens streamed to all of them over a round. Ratios are taken within a turn and
their medians reported, with the goals of issue 12: one client >= 0.8x the engine at batch 1 and >= 3x HF
batch 1; N = 16 clients >= 0.8x the engine at batch 16 and >= 2x HF batch 16; p99 time to first token with 16
clients < 500 ms; time to ready <= 90 s cold and <= 20 s warm.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from embergpt.bench import MAX_ROWS, check_count, check_seconds, parse_positive_ints
from embergpt.errors import EmbergptError
from embergpt.whole_numbers import check_threads

TOKEN_EVENT = 'data: {"type":"token"'
MAX_OUTPUT_TOKENS = 4096  # the server is started with --max-output-tokens this large
COMPILE_CHOICES = ("auto", "off", "default", "max-autotune")
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
GOALS = {
    "clients_1_vs_engine_b1": 0.8,
    "clients_1_vs_hf_b1": 3.0,
    "clients_16_vs_engine_b16": 0.8,
    "clients_16_vs_hf_b16": 2.0,
}
TTFT_P99_GOAL_MS = 500.0
COLD_READY_GOAL_S = 90.0
WARM_READY_GOAL_S = 20.0


EXAMPLE = """example (about 10 minutes on 2 CPU cores, most of it compiling):
  embergpt bench serve --json --modes off:float32,default:float32 --seconds 4 --repeats 2 --threads 1"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", default="1,16", help="comma-separated client counts (default 1,16)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of one round per client count (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="measurement turns; medians are reported (default 3)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request (default 128)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="prompt length in tokens (default 32)")
    parser.add_argument("--modes", default="auto",
                        help="serving configurations to compare, comma-separated COMPILE:DTYPE with COMPILE in "
                             "auto|off|default|max-autotune and DTYPE in auto|float32|bfloat16|float16, e.g. "
                             "off:float32,default:float32,default:bfloat16,max-autotune:bfloat16 (default auto: "
                             "what `embergpt serve` runs on this device)")
    parser.add_argument("--device", default=None, help="the device of the server, engine and HF (default: best)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads of the server and of this process (default: torch's)")
    parser.add_argument("--ready-timeout", type=float, default=1200.0,
                        help="seconds a server start may take to be ready before the mode is reported as failed "
                             "(default 1200)")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True,
                        help="measure HF transformers as the baseline (default on; needs `pip install transformers`)")


# ---------------------------------------------------------------------- small pieces


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def parse_modes(text: str) -> list[tuple[str, str]]:
    """'off:float32,default' -> [("off", "float32"), ("default", "auto")]; a one-line ValueError otherwise."""
    modes: list[tuple[str, str]] = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        compile_mode, _, dtype = part.strip().partition(":")
        dtype = dtype or "auto"
        if compile_mode not in COMPILE_CHOICES or dtype not in DTYPE_CHOICES:
            modes = []
            break
        modes.append((compile_mode, dtype))
    if not modes:
        raise ValueError(f"--modes takes comma-separated COMPILE:DTYPE, COMPILE one of {'|'.join(COMPILE_CHOICES)}"
                         f" and DTYPE one of {'|'.join(DTYPE_CHOICES)}, e.g. off:float32,default:bfloat16; "
                         f"got {text!r}")
    return modes


def resolve_mode(mode: tuple[str, str], device: Any) -> tuple[str, str]:
    """"auto" parts -> what `embergpt serve` would run on `device` (embergpt.inference.defaults)."""
    from embergpt.inference.defaults import serve_defaults

    auto_compile, auto_dtype = serve_defaults(device)
    return (auto_compile if mode[0] == "auto" else mode[0], auto_dtype if mode[1] == "auto" else mode[1])


def build_checkpoint(root: Path) -> tuple[Path, list[str]]:
    """The bench-shape checkpoint (random weights, BPE tokenizer) and texts to cut the clients' prompts from."""
    import torch

    from embergpt.bench.decode import _random_gpt
    from embergpt.checkpoint import save_checkpoint
    from embergpt.config import PRESETS
    from embergpt.data import load_text
    from embergpt.tokenizer import BPETokenizer

    text = load_text("builtin:shakespeare")
    config = PRESETS["bench"]
    tok = BPETokenizer.train(text, config.vocab_size)
    # every weight random (decode.py's model): an untrained init's zero projections would make greedy decoding
    # repeat one token, which could be the stop token
    model = _random_gpt(config.replace(vocab_size=max(config.vocab_size, tok.vocab_size)), torch.device("cpu"))
    path = save_checkpoint(model, root / "bench-serve", tokenizer=tok)
    return path, [text[i : i + 4000] for i in range(0, 64 * 9973, 9973)]


def _prompt(tok: Any, text: str, n_tokens: int) -> str:
    return tok.decode(tok.encode(text)[:n_tokens])


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


# ---------------------------------------------------------------------- the server


class Server:
    """One `embergpt serve` subprocess; its output goes to a log file (a pipe nobody reads could fill up)."""

    def __init__(self, cmd: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.started = time.monotonic()
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        self.url: str | None = None

    def last_line(self) -> str:
        lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        return lines[-1] if lines else "no output"

    def cpu_seconds(self) -> float | None:
        """CPU seconds the server has used so far, its finished children (the C++ compiler) included: a time to
        ready that other processes on a shared machine disturb less than the wall clock. None off Linux."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return round(sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK"), 2)
        except (OSError, ValueError, IndexError):
            return None

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """Poll until /api/health says ready; returns the health JSON plus `ready_s` (process start -> ready, seen
        from here). Raises EmbergptError (one line) when the process dies or `timeout` passes."""
        import httpx

        deadline = self.started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EmbergptError(f"the benchmark server exited (code {self.proc.returncode}): {self.last_line()}")
            if self.url is None:
                for line in self.log.read_text(errors="replace").splitlines():
                    if "listening on " in line:
                        self.url = line.split("listening on ", 1)[1].strip()
            if self.url is not None:
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = httpx.get(self.url + "/api/health", timeout=5).json()
                    if health.get("ready"):
                        return {**health, "ready_s": round(time.monotonic() - self.started, 2),
                                "ready_cpu_s": self.cpu_seconds()}
            time.sleep(0.1)
        raise EmbergptError(f"the benchmark server was not ready after {timeout:g} s (--ready-timeout); "
                            f"its last line: {self.last_line()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def server_command(checkpoint: Path, max_batch: int, compile_mode: str, dtype: str, device: str | None,
                   threads: int | None) -> list[str]:
    cmd = [sys.executable, "-m", "embergpt", "serve", "--checkpoint", str(checkpoint), "--port", "0",
           "--rate-limit-rps", "0", "--max-batch", str(max_batch), "--max-output-tokens", str(MAX_OUTPUT_TOKENS),
           "--compile", compile_mode, "--dtype", dtype]
    if device:
        cmd += ["--device", device]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    return cmd


def server_env(cache: Path) -> dict[str, str]:
    """This environment with $EMBERGPT_CACHE = `cache`, the only compile cache the server may use."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "EMBERGPT_COMPILE",
                                                             "EMBERGPT_DTYPE")}
    env["EMBERGPT_CACHE"] = str(cache)
    return env


# ---------------------------------------------------------------------- streaming clients


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
    """`clients` streaming clients sending greedy requests back to back for `seconds`: tok/s, TTFT, errors."""
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
                body = {"prompt": prompts[(i * 7 + k) % len(prompts)], "max_tokens": max_tokens, "temperature": 0}
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


# ---------------------------------------------------------------------- in-process baselines


@contextlib.contextmanager
def _inductor_cache(path: Path) -> Iterator[None]:
    """Inductor's cache dir pointed at `path` for this process (the server's, so its graphs are reused)."""
    old = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path / "inductor")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = old


def engine_runner(checkpoint: Path, device: str | None, compile_mode: str, dtype: str, prompts: list[str],
                  stop_ids: list[int]) -> Callable[[int, int], float]:
    """(batch, new tokens) -> tok/s of the engine's greedy `generate()` in the server's configuration (the first
    calls compile)."""
    from embergpt.bench.decode import _timed
    from embergpt.inference.loading import load_for_inference

    loaded = load_for_inference(checkpoint, device=device, dtype=dtype)
    engine = loaded.engine(compile=compile_mode)
    ids = [engine.encode(p) for p in prompts]  # with <|bos|>, as the server encodes a prompt

    def run(batch: int, n: int) -> float:
        rows = [ids[i % len(ids)] for i in range(batch)]
        out: list[list[int]] = []
        wall, _ = _timed(lambda: out.extend(engine.generate(rows, n, stop_tokens=stop_ids)), engine.device)
        return sum(len(r) for r in out) / wall

    return run


def hf_runner(device: Any, prompt_len: int) -> Callable[[int, int], float]:
    """(batch, new tokens) -> tok/s of HF `generate()` (greedy, exactly `new tokens` each) on bench/decode.py's
    parameter-matched LlamaForCausalLM; ImportError without transformers."""
    import torch

    from embergpt.bench.decode import _hf_model, _timed
    from embergpt.config import PRESETS

    config = PRESETS["bench"]
    model = _hf_model(config, device)
    gen = torch.Generator().manual_seed(1)

    def run(batch: int, n: int) -> float:
        ids = torch.randint(0, config.vocab_size, (batch, prompt_len), generator=gen).to(device)

        def call() -> None:
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, pad_token_id=0)

        wall, _ = _timed(call, device)
        return batch * n / wall

    return run


# ---------------------------------------------------------------------- one configuration


def _ratios(turns: list[dict[str, float]], small: int, big: int) -> dict[str, float]:
    """Median over turns of each ratio measured within a turn."""
    pairs = {f"clients_{small}_vs_engine_b{small}": (f"clients_{small}", f"engine_b{small}"),
             f"clients_{small}_vs_hf_b{small}": (f"clients_{small}", f"hf_b{small}"),
             f"clients_{big}_vs_engine_b{big}": (f"clients_{big}", f"engine_b{big}"),
             f"clients_{big}_vs_hf_b{big}": (f"clients_{big}", f"hf_b{big}")}
    out = {}
    for name, (num, den) in pairs.items():
        values = [t[num] / t[den] for t in turns if num in t and den in t and t[den] > 0]
        if values:
            out[name] = round(_median(values), 2)
    return out


def measure_mode(args: argparse.Namespace, mode: tuple[str, str], checkpoint: Path, root: Path, prompts: list[str],
                 levels: list[int], hf: Callable[[int, int], float] | None, stop_ids: list[int]) -> dict[str, Any]:
    compile_mode, dtype = mode
    name = f"{compile_mode}:{dtype}"
    cache = root / f"cache-{compile_mode}-{dtype}"
    cache.mkdir()
    out: dict[str, Any] = {"mode": name, "compile": compile_mode, "dtype": dtype}
    cmd = server_command(checkpoint, max(levels), compile_mode, dtype, args.device, args.threads)
    ready: dict[str, Any] = {}
    server = None
    try:
        for start in ("cold", "warm"):  # cold: an empty cache dir; warm: the cache the cold start left
            server = Server(cmd, server_env(cache), root / f"server-{compile_mode}-{dtype}-{start}.log")
            try:
                health = server.wait_ready(args.ready_timeout)
            except EmbergptError as e:
                ready[f"{start}_s"] = None
                out["time_to_ready"] = ready
                out["error"] = f"{start} start: {e} (after {time.monotonic() - server.started:.0f} s)"
                return out
            ready[f"{start}_s"] = health["ready_s"]
            ready[f"{start}_cpu_s"] = health["ready_cpu_s"]
            ready[f"{start}_server_s"] = health.get("time_to_ready_seconds")
            ready[f"{start}_warmup_s"] = health.get("warmup_seconds")
            failed = [line for line in server.log.read_text(errors="replace").splitlines() if "warm-up failed" in line]
            if failed:  # the server serves, but eagerly: its figures are not those of the mode asked for
                out["warning"] = f"{start} start: {failed[-1].strip()[:300]}"
            if start == "cold":
                server.stop()
        ready["cold_goal_met"] = ready["cold_s"] <= COLD_READY_GOAL_S
        ready["warm_goal_met"] = ready["warm_s"] <= WARM_READY_GOAL_S
        out["time_to_ready"] = ready
        url = server.url
        small, big = levels[0], levels[-1]
        with _inductor_cache(cache):
            engine = engine_runner(checkpoint, args.device, compile_mode, dtype, prompts, stop_ids)
            n = args.max_tokens
            t0 = time.monotonic()
            for b in sorted({1, big}):  # warm-up: compiles the graphs this process meets
                engine(b, n)
            out["engine_warmup_s"] = round(time.monotonic() - t0, 1)
            if hf is not None:
                hf(1, 8)
            asyncio.run(run_round(url, big, min(2.0, args.seconds), prompts, n))  # the server's warm-up
            rounds: dict[int, list[dict[str, Any]]] = {c: [] for c in levels}
            turns: list[dict[str, float]] = []
            for _ in range(args.repeats):
                turn: dict[str, float] = {}
                for b in sorted({small, big}):
                    turn[f"engine_b{b}"] = engine(b, n)
                    if hf is not None:
                        turn[f"hf_b{b}"] = hf(b, n)
                for c in levels:  # interleaved, so slow phases of a noisy machine hit every figure alike
                    r = asyncio.run(run_round(url, c, args.seconds, prompts, n))
                    rounds[c].append(r)
                    turn[f"clients_{c}"] = r["tok_per_s"]
                turns.append(turn)
    finally:
        if server is not None:
            server.stop()
    results = [_median_round(rounds[c]) for c in levels]
    require_measurements(results)
    by_clients = {r["clients"]: r for r in results}
    out["engine"] = {f"b{b}_tok_s": round(_median([t[f"engine_b{b}"] for t in turns]), 1) for b in sorted({small, big})}
    if hf is not None:
        out["hf"] = {f"b{b}_tok_s": round(_median([t[f"hf_b{b}"] for t in turns]), 1) for b in sorted({small, big})}
    out["levels"] = results
    out["ratios"] = _ratios(turns, small, big)
    if (small, big) == (1, 16):
        goals: dict[str, Any] = {k: {"value": out["ratios"].get(k), "goal": f">= {v}",
                                     "met": k in out["ratios"] and out["ratios"][k] >= v} for k, v in GOALS.items()}
        p99 = by_clients[16]["ttft_ms_p99"]
        goals["ttft_ms_p99_16_clients"] = {"value": p99, "goal": f"< {TTFT_P99_GOAL_MS:g}",
                                           "met": p99 < TTFT_P99_GOAL_MS}
        goals["cold_ready_s"] = {"value": ready["cold_s"], "goal": f"<= {COLD_READY_GOAL_S:g}",
                                 "met": ready["cold_goal_met"]}
        goals["warm_ready_s"] = {"value": ready["warm_s"], "goal": f"<= {WARM_READY_GOAL_S:g}",
                                 "met": ready["warm_goal_met"]}
        goals["errors"] = sum(r["errors"] for r in results)
        out["goals"] = goals
    return out


# ---------------------------------------------------------------------- the command


def run(args: argparse.Namespace) -> dict[str, Any]:
    # every flag is checked before the checkpoint and the server are built, so a typo fails at once
    levels = sorted(set(parse_positive_ints(args.clients, "--clients", "1,4,16", MAX_ROWS)))
    check_seconds("--seconds", args.seconds)
    check_seconds("--ready-timeout", args.ready_timeout)
    for flag, value in (("--repeats", args.repeats), ("--prompt-tokens", args.prompt_tokens)):
        check_count(flag, value)
    if not 1 <= args.max_tokens <= MAX_OUTPUT_TOKENS:
        raise ValueError(f"--max-tokens must be between 1 and {MAX_OUTPUT_TOKENS}, got {args.max_tokens}")
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    requested = parse_modes(args.modes)
    import torch

    from embergpt.config import PRESETS
    from embergpt.device import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    modes = list(dict.fromkeys(resolve_mode(m, device) for m in requested))
    for _, dtype in modes:
        resolve_dtype(dtype, device)  # float16 on a CPU is refused here, not after the checkpoint is built
    if args.prompt_tokens + 1 + args.max_tokens > PRESETS["bench"].sequence_len:
        raise ValueError(f"--prompt-tokens + --max-tokens must fit the bench shape's sequence_len "
                         f"{PRESETS['bench'].sequence_len}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the engine and HF run in this process: same threads as the server
    load_before = os.getloadavg()
    hf, hf_error = None, None
    if args.hf:
        try:
            hf = hf_runner(device, args.prompt_tokens + 1)
        except ImportError:
            hf_error = "transformers is not installed: pip install 'embergpt[bench]'"
    results = []
    with tempfile.TemporaryDirectory(prefix="embergpt-bench-serve-") as tmp:
        root = Path(tmp)
        checkpoint, texts = build_checkpoint(root)
        from embergpt.tokenizer import load_tokenizer

        tok = load_tokenizer(checkpoint / "tokenizer.json")
        prompts = [_prompt(tok, t, args.prompt_tokens) for t in texts]
        stop_ids = [tok.bos_id]  # what the server stops /api/generate on
        for mode in modes:
            results.append(measure_mode(args, mode, checkpoint, root, prompts, levels, hf, stop_ids))
    measured = [r for r in results if "levels" in r]
    if not measured:
        raise EmbergptError("no serving configuration could be measured: " + "; ".join(
            f"{r['mode']}: {r['error']}" for r in results))
    config = PRESETS["bench"]
    small, big = levels[0], levels[-1]
    tok_s = lambda r, c: next(x["tok_per_s"] for x in r["levels"] if x["clients"] == c)  # noqa: E731
    return {
        "benchmark": "serve",
        "shape": "bench",
        "model": {k: getattr(config, k) for k in ("n_layer", "n_head", "n_kv_head", "n_embd", "vocab_size",
                                                  "sequence_len")},
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()]},
        "max_tokens": args.max_tokens,
        "prompt_tokens": args.prompt_tokens,
        "clients": levels,
        "seconds_per_round": args.seconds,
        "repeats": args.repeats,
        "statistic": "median over turns; ratios taken within a turn; greedy; tok/s includes prefill",
        "hf": None if hf is None else {"model": "LlamaForCausalLM (parameter-matched)", "dtype": "float32"},
        "hf_error": hf_error,
        "modes": results,
        "fastest": {f"clients_{c}": max(measured, key=lambda r, c=c: tok_s(r, c))["mode"] for c in (small, big)},
    }
