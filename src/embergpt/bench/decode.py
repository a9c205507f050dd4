"""`embergpt bench decode`: KV-cache decode speed against HF transformers' LlamaForCausalLM of the same shape.

The shape is `PRESETS["bench"]` (vocab 8192, 6 layers, d=384, 6 heads, 6 KV heads) with random weights. For each
engine configuration (dtype x eager/compiled) and for HF `generate()` (greedy, min_new_tokens=max_new_tokens), one
warm-up run is discarded, then the configurations are timed in turns, `--repeats` times, and medians are reported:

- batch 1, a 16-token prompt, 256 new tokens: tok/s (wall clock, prefill included, as HF's generate is timed), tok/s
  of CPU time (less sensitive to other processes on a shared machine), and the memory bandwidth achieved: the bytes
  of weights and of KV cache read per token, times tok/s;
- per-token latency of decode steps starting at positions 64 and 1024;
- batch 16 aggregate tok/s;
- peak memory.

Goals (checked on the fastest configuration, and reported for each): >= 3x HF's tok/s, latency at 1024 within 25%
of that at 64, batch-16 aggregate >= 8x batch 1.
"""

from __future__ import annotations

import argparse
import platform
import resource
import statistics
import time
from typing import Any

import torch

from embergpt.whole_numbers import check_threads

GOAL_VS_HF = 3.0
GOAL_LATENCY_RATIO = 1.25
GOAL_BATCH_SCALING = 8.0
MODES = {"eager": False, "compiled": "default", "max-autotune": "max-autotune"}  # --modes name -> Engine(compile=)


EXAMPLE = """example (the eager fp32 and bf16 rows only, no HF baseline: a few minutes on a 2-core CPU; the full default
run compiles three ways and takes much longer):
  embergpt bench decode --modes eager --no-hf --repeats 1 --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="bench", help="model shape from embergpt.config.PRESETS (default bench)")
    parser.add_argument("--prompt-len", type=int, default=16,
                        help="tokens of (random) prompt prefilled before decoding (default 16)")
    parser.add_argument("--new-tokens", type=int, default=256,
                        help="tokens decoded per measurement, the tok/s numerator (default 256)")
    parser.add_argument("--batch", type=int, default=16, help="the large batch for aggregate tok/s (default 16)")
    parser.add_argument("--positions", default="64,1024", help="positions for per-token latency (default 64,1024)")
    parser.add_argument("--latency-steps", type=int, default=32,
                        help="decode steps timed at each position (default 32)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats, medians reported, >= 1 (default 3)")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes to measure (default both)")
    parser.add_argument("--modes", default="eager,compiled,max-autotune",
                        help="decode-step modes to measure: eager, compiled (torch.compile default), max-autotune "
                             "(GEMM autotuning, frozen weights; slow to compile) (default all three)")
    parser.add_argument("--hf", action=argparse.BooleanOptionalAction, default=True,
                        help="measure HF transformers as the baseline (default on; needs `pip install transformers`)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device (default cpu)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn()."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def _random_gpt(config: Any, device: torch.device, seed: int = 0) -> torch.nn.Module:
    from embergpt.model import GPT

    torch.manual_seed(seed)
    model = GPT(config)
    with torch.no_grad():  # random output projections too, so greedy decoding does not sit on one token
        for p in model.parameters():
            p.normal_(0, 0.02 if p.dim() == 2 and p.size(0) == config.vocab_size else p.size(-1) ** -0.5)
    return model.to(device).eval()


def _hf_model(config: Any, device: torch.device) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_config = LlamaConfig(
        hidden_size=config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        # SwiGLU has three MLP matrices to our ReLU^2's two: 2/3 of our width gives both the same parameters, so
        # each decode step reads the same bytes of weights (Llama's own 8/3 d rule, applied to our 4 d)
        intermediate_size=(2 * 4 * config.n_embd) // 3,
        vocab_size=config.vocab_size,
        max_position_embeddings=config.sequence_len,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(hf_config).to(device).eval()


class _Config:
    """One engine configuration under test."""

    def __init__(self, base_model: torch.nn.Module, dtype: torch.dtype, mode: str) -> None:
        from embergpt.inference.engine import Engine

        model = type(base_model)(base_model.config).to(next(base_model.parameters()).device)
        model.load_state_dict(base_model.state_dict())
        self.name = f"{mode}-{str(dtype).removeprefix('torch.')}"
        self.engine = Engine(model, dtype=dtype, compile=MODES[mode])
        self.dtype = dtype
        self.runs: dict[str, list[tuple[float, float]]] = {}


def _weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every matrix, but only one row of the embedding."""
    total = 0
    for name, p in model.named_parameters():
        total += p[0].nbytes if name.endswith(("wte.weight", "embed_tokens.weight")) else p.nbytes
    return total


def _kv_bytes_per_token(config: Any, dtype: torch.dtype, attended: float) -> float:
    """Bytes of K and V read by one decode step attending over `attended` positions."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layer * config.n_kv_head * config.head_dim * itemsize * attended


def _latency(engine: Any, position: int, steps: int, vocab: int, device: torch.device) -> float:
    """Seconds per decode step for `steps` greedy steps starting at `position`."""
    gen = torch.Generator().manual_seed(position)
    prompt = torch.randint(0, vocab, (1, position), generator=gen).to(device)
    with torch.no_grad():
        logits, cache = engine.prefill(prompt, max_new_tokens=steps)
        token = logits.argmax(-1)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            token = engine.decode_step(token, cache).argmax(-1)
        _sync(device)
    return (time.perf_counter() - start) / steps


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from embergpt.bench import MAX_ROWS, check_count, parse_positive_ints
    from embergpt.config import get_preset
    from embergpt.device import resolve_device, resolve_dtype

    # every flag is checked before any model is built, so a typo fails at once with the flag's name
    for flag, value in (("--prompt-len", args.prompt_len), ("--new-tokens", args.new_tokens),
                        ("--latency-steps", args.latency_steps), ("--repeats", args.repeats)):
        check_count(flag, value)
    check_count("--batch", args.batch, MAX_ROWS)
    if args.threads is not None:
        check_threads(args.threads, "--threads")
    positions = parse_positive_ints(args.positions, "--positions", "64,1024")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or not set(modes) <= MODES.keys():
        raise ValueError(f"--modes takes {', '.join(MODES)} (comma-separated); got {args.modes!r}")
    if not any(name.strip() for name in args.dtypes.split(",")):
        raise ValueError(f"--dtypes takes comma-separated dtypes, e.g. float32,bfloat16; got {args.dtypes!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)  # the benchmark process only, never at import
    device = resolve_device(args.device)
    config = get_preset(args.preset)
    longest = max([*positions, 0]) + args.latency_steps
    if max(longest, args.prompt_len + args.new_tokens) > config.sequence_len:
        raise ValueError(
            f"max(--positions) + --latency-steps ({longest}) and --prompt-len + --new-tokens "
            f"({args.prompt_len + args.new_tokens}) must not exceed the {args.preset} preset's "
            f"sequence_len={config.sequence_len}"
        )
    dtypes = [resolve_dtype(name.strip(), device) for name in args.dtypes.split(",") if name.strip()]

    base = _random_gpt(config, device)
    configs = [_Config(base, dt, mode) for dt in dtypes for mode in modes]
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, config.vocab_size, (args.prompt_len,), generator=gen).tolist()
    prompts_big = torch.randint(0, config.vocab_size, (args.batch, args.prompt_len), generator=gen).tolist()
    n = args.new_tokens

    hf, hf_runs, hf_error = None, [], None
    if args.hf:
        try:
            hf = _hf_model(config, device)
        except ImportError:
            hf_error = "transformers is not installed: pip install 'embergpt[bench]'"
    hf_ids = torch.tensor([prompt], device=device)

    def hf_generate() -> None:
        with torch.no_grad():
            hf.generate(hf_ids, attention_mask=torch.ones_like(hf_ids), max_new_tokens=n, min_new_tokens=n,
                        do_sample=False, pad_token_id=0)

    # warm-up (compilation included), then timed turns so that noise hits every configuration alike
    for c in configs:
        c.engine.generate(prompt, n)
        c.engine.generate(prompts_big, n)
        for p in positions:
            _latency(c.engine, p, args.latency_steps, config.vocab_size, device)
    if hf is not None:
        hf_generate()
    for _ in range(args.repeats):
        for c in configs:
            c.runs.setdefault("b1", []).append(_timed(lambda c=c: c.engine.generate(prompt, n), device))
            c.runs.setdefault("big", []).append(_timed(lambda c=c: c.engine.generate(prompts_big, n), device))
            for p in positions:
                t = _latency(c.engine, p, args.latency_steps, config.vocab_size, device)
                c.runs.setdefault(f"lat{p}", []).append((t, t))
        if hf is not None:
            hf_runs.append(_timed(hf_generate, device))

    hf_tok_s = n / _median([w for w, _ in hf_runs]) if hf_runs else None
    hf_cpu_tok_s = n / _median([c for _, c in hf_runs]) if hf_runs else None
    results: dict[str, Any] = {}
    for c in configs:
        b1 = n / _median([w for w, _ in c.runs["b1"]])
        b1_cpu = n / _median([cpu for _, cpu in c.runs["b1"]])
        big = args.batch * n / _median([w for w, _ in c.runs["big"]])
        model = c.engine.model
        cache_len = c.engine.cache_len(args.prompt_len, n)
        steps = range(args.prompt_len, args.prompt_len + n - 1)
        attended = statistics.mean(c.engine.window(p + 1, cache_len) for p in steps) if n > 1 else 0
        bytes_per_token = _weight_bytes(model) + _kv_bytes_per_token(config, c.dtype, attended)
        latency = {str(p): _median([w for w, _ in c.runs[f"lat{p}"]]) * 1e3 for p in positions}
        entry: dict[str, Any] = {
            "tok_s": round(b1, 1),
            "cpu_tok_s": round(b1_cpu, 1),
            "ms_per_token": round(1e3 / b1, 3),
            "bytes_per_token": int(bytes_per_token),
            "bandwidth_gb_s": round(bytes_per_token * b1 / 1e9, 2),
            "latency_ms": {k: round(v, 3) for k, v in latency.items()},
            f"batch{args.batch}_tok_s": round(big, 1),
            "batch_scaling": round(big / b1, 2),
            "weights_mb": round(_weight_bytes(model) / 2**20, 1),
        }
        if hf_tok_s:
            entry["vs_hf"] = round(b1 / hf_tok_s, 2)
            entry["vs_hf_cpu_time"] = round(b1_cpu / hf_cpu_tok_s, 2)
        if len(positions) >= 2:
            entry["latency_ratio"] = round(latency[str(positions[-1])] / latency[str(positions[0])], 3)
        entry["goal_met"] = {
            "vs_hf": entry["vs_hf"] >= GOAL_VS_HF if "vs_hf" in entry else None,
            "latency_ratio": entry["latency_ratio"] <= GOAL_LATENCY_RATIO if "latency_ratio" in entry else None,
            "batch_scaling": entry["batch_scaling"] >= GOAL_BATCH_SCALING,
        }
        results[c.name] = entry

    best_name = max(results, key=lambda k: results[k]["tok_s"])
    best = results[best_name]
    goals: dict[str, Any] = {}
    if hf_tok_s:
        goals["vs_hf"] = {"value": best["vs_hf"], "goal": GOAL_VS_HF, "goal_met": best["vs_hf"] >= GOAL_VS_HF}
    if "latency_ratio" in best:
        goals["latency_ratio"] = {"value": best["latency_ratio"], "goal": GOAL_LATENCY_RATIO,
                                  "goal_met": best["latency_ratio"] <= GOAL_LATENCY_RATIO}
    goals["batch_scaling"] = {"value": best["batch_scaling"], "goal": GOAL_BATCH_SCALING,
                              "goal_met": best["batch_scaling"] >= GOAL_BATCH_SCALING}

    peak: dict[str, float] = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        peak["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return {
        "benchmark": "decode",
        "shape": {"preset": args.preset, **{k: getattr(config, k) for k in ("vocab_size", "n_layer", "n_embd",
                                                                              "n_head", "n_kv_head")}},
        "setup": {"batch": 1, "prompt_len": args.prompt_len, "new_tokens": n, "greedy": True,
                  "large_batch": args.batch, "repeats": args.repeats, "statistic": "median, warm-up excluded"},
        "machine": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                    "cpu": platform.processor() or platform.machine()},
        "hf": None if hf is None else {"tok_s": round(hf_tok_s, 1), "cpu_tok_s": round(hf_cpu_tok_s, 1),
                                       "model": "LlamaForCausalLM", "dtype": "float32",
                                       "weights_mb": round(_weight_bytes(hf) / 2**20, 1)},
        "hf_error": hf_error,
        "engine": results,
        "best": best_name,
        "goals": goals,
        "memory": peak,
    }
