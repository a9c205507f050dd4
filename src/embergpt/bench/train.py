"""`embergpt bench train`: training-step throughput, MFU and peak memory for one fixed shape, against the matmul
peak and HF transformers' Llama measured in the same run.

Shape: vocab 8192, seq 512, 6 layers, d=384, 6 heads, batch 8 (the `bench` preset at seq 512). One step =
forward + backward + fused AdamW step on random tokens. Variants: fp32 and bf16 autocast, eager and
torch.compile'd (HF: eager, unless --hf-compile), and `gpt-<dtype>-eager-plain-loss`: our model with the loss as
it was before `embergpt.chunked_loss` (the whole [B, T, V] logits, then cross-entropy), so that the gain in
speed and memory is measured in the same run. The peaks are the best GFLOP/s of square fp32 and bf16 matmuls
(1024 and 2048) measured first.

MFU = (model FLOPs per token x tok/s) / peak, each model counting its own FLOPs (6 x non-embedding parameters +
the attention term); the goal is >= 70% of the bf16 matmul peak. The HF baseline is a LlamaForCausalLM of the
same width, depth, heads and vocab with intermediate_size 1024, so that its SwiGLU MLP (3 matrices) has as many
parameters as our ReLU² MLP (2 matrices of 4d). Timings are medians over steps taken round-robin across the
variants, so a burst of load on a shared machine hits every contender alike.

On a CPU whose bf16 matmuls are emulated (no AVX-512-BF16, no AMX: under a tenth of the fp32 rate on a 512
probe), the bf16 variants are left out unless --variants names them, and the bf16 "peak" is that probe.

Peak memory of a step: what one steady-state training step (after a first one) adds on top of the weights and
the optimizer state: activations, gradients, temporaries. On CUDA `torch.cuda.max_memory_allocated`; on a CPU
the resident-set high-water mark of a fresh subprocess per variant (Linux: VmHWM, reset before the step, with
glibc told to return freed blocks at once so the resident set follows what is live).

The summary compares, in the same run: the default configuration of `embergpt train` on this device
(`embergpt.device.training_defaults`) against HF eager in the same dtype; our best against HF's best; our best
against the bf16 matmul peak; the default's step memory against the plain-loss variant's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

GOAL_FRACTION_OF_BF16_PEAK = 0.70
GOAL_DEFAULT_VS_HF_EAGER = 1.0
GOAL_BEST_VS_HF_BEST = 1.3
GOAL_MEMORY_REDUCTION = 0.30
SHAPE = dict(vocab_size=8192, sequence_len=512, n_layer=6, n_head=6, n_kv_head=6, n_embd=384)
PLAIN_LOSS = "-plain-loss"
_MEMORY_CHILD_TIMEOUT = 900  # seconds: a compiled variant compiles again in its subprocess


EXAMPLE = """example (a few minutes on 2 CPU cores):
  embergpt bench train --json --steps 3 --warmup 1 --threads 1 --no-compile"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per step (default 8)")
    parser.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps per variant (default 5)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="CPU threads (default: torch's); 1 is steadier on cores shared with other work")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants (default: run them)")
    parser.add_argument("--no-hf", action="store_true",
                        help="skip the HF transformers Llama baseline (default: run it)")
    parser.add_argument("--hf-compile", action="store_true",
                        help="also time HF's Llama under torch.compile (default: eager only)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement (default: measure)")
    parser.add_argument("--variants", default=None,
                        help="comma-separated subset, e.g. gpt-fp32-eager,hf-bf16-eager (default: all)")


def _llama(vocab: int, seq: int, layers: int, heads: int, width: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab, hidden_size=width, intermediate_size=1024, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=seq, tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def _hf_flops_per_token(model: Any, seq: int) -> int:
    c = model.config
    non_embedding = sum(p.numel() for p in model.parameters()) - model.model.embed_tokens.weight.numel()
    return 6 * non_embedding + 12 * c.num_hidden_layers * c.hidden_size * seq


def parse_variant(name: str) -> tuple[str, str, bool, bool]:
    """'gpt-bf16-compiled' -> (family, dtype name, compiled, plain loss)."""
    plain = name.endswith(PLAIN_LOSS)
    family, dt, mode = name.removesuffix(PLAIN_LOSS).split("-")
    return family, dt, mode == "compiled", plain


def build_step(name: str, device: Any, batch_size: int) -> tuple[Callable[[], None], int]:
    """One training step of variant `name` on fixed random tokens, and the model's FLOPs per token."""
    import torch
    import torch.nn.functional as F

    from embergpt.config import GPTConfig
    from embergpt.device import autocast
    from embergpt.model import GPT
    from embergpt.train.flops import model_flops_per_token

    family, dt, compiled, plain = parse_variant(name)
    dtype = torch.float32 if dt == "fp32" else torch.bfloat16
    B, T, V = batch_size, SHAPE["sequence_len"], SHAPE["vocab_size"]
    torch.manual_seed(0)
    x = torch.randint(0, V, (B, T), device=device)
    y = torch.randint(0, V, (B, T), device=device)
    if family == "gpt":
        model: Any = GPT(GPTConfig(**SHAPE)).to(device)
        flops = model_flops_per_token(model)
        if plain:  # the loss as it was: every logit materialised, then cross-entropy

            def forward(inp: Any, tgt: Any, model: Any = model) -> Any:
                return F.cross_entropy(model(inp).view(-1, V), tgt.view(-1), ignore_index=-1)
        else:
            forward = model
    else:
        model = _llama(V, T, SHAPE["n_layer"], SHAPE["n_head"], SHAPE["n_embd"]).to(device)
        flops = _hf_flops_per_token(model, T)

        def forward(inp: Any, tgt: Any, model: Any = model) -> Any:
            return model(input_ids=inp, labels=tgt).loss

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    fn = torch.compile(forward) if compiled else forward

    def step() -> None:
        with autocast(device, dtype):
            loss = fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, flops


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def measure_step_memory(name: str, device: Any, batch_size: int) -> int:
    """Bytes one steady-state step of `name` adds over weights + optimizer state (see the module docstring).

    On a CPU, call this in a fresh process (`_memory_in_subprocess`): the allocator's history of other variants
    would blur the figure."""
    import gc

    import torch

    step, _ = build_step(name, device, batch_size)
    step()  # the first step allocates the optimizer state (and compiles)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(device) - base
    base = _rss_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident set
    step()
    return _rss_bytes("VmHWM") - base


def _memory_in_subprocess(name: str, device: Any, batch_size: int, threads: int) -> int | None:
    """measure_step_memory in a fresh interpreter; None where it cannot be measured (not Linux, a failure)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    # every block >= 64 KiB is mmap'ed and unmapped when freed: the resident set then follows live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "embergpt.bench.train", name, str(device), str(batch_size), str(threads)]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=_MEMORY_CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_step_bytes"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from embergpt.device import resolve_device, training_defaults
    from embergpt.train.flops import measure_matmul_flops

    threads = 1 if args.threads is None else args.threads
    for flag, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                               ("--warmup", args.warmup, 0), ("--threads", threads, 1)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    device = resolve_device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    defaults = training_defaults(device)
    default_dt = "bf16" if defaults.dtype_name == "bfloat16" else "fp32"
    default_name = f"gpt-{default_dt}-{'compiled' if defaults.compile else 'eager'}"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    B, T = args.batch_size, SHAPE["sequence_len"]

    hf_available = False
    if not args.no_hf:
        try:
            import transformers  # noqa: F401

            hf_available = True
        except ImportError:
            pass

    variants: list[str] = []
    for family in ["gpt"] + (["hf"] if hf_available else []):
        for dt in ("fp32", "bf16"):
            compile_it = not args.no_compile and (family == "gpt" or args.hf_compile)
            for mode in ["eager"] + (["compiled"] if compile_it else []):
                variants.append(f"{family}-{dt}-{mode}")
    variants.append(f"gpt-{default_dt}-eager{PLAIN_LOSS}")
    if args.variants is not None:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown or not wanted:
            raise ValueError(
                f"unknown --variants {', '.join(unknown) or repr(args.variants)}; choose from {', '.join(variants)}"
            )
        variants = [v for v in variants if v in wanted]

    # measured once the flags are known to be good: this takes a few seconds
    peaks = {"fp32": max(measure_matmul_flops(device, torch.float32, size, seconds=1.0) for size in (1024, 2048))}
    # a CPU without AVX-512-BF16 or AMX emulates bf16 matmuls ~100x slower than fp32: a small probe first
    peaks["bf16"] = measure_matmul_flops(device, torch.bfloat16, 512, seconds=1.0)
    native_bf16 = device.type != "cpu" or peaks["bf16"] >= 0.1 * peaks["fp32"]
    if native_bf16:
        peaks["bf16"] = max(measure_matmul_flops(device, torch.bfloat16, size, seconds=1.0) for size in (1024, 2048))
    elif args.variants is None:  # each bf16 step would take minutes; asked for by name, they still run
        variants = [v for v in variants if parse_variant(v)[1] != "bf16"]

    steps: dict[str, Callable[[], None]] = {}
    flops: dict[str, int] = {}
    compile_seconds: dict[str, float] = {}
    for name in variants:
        step, flops[name] = build_step(name, device, B)
        start = time.perf_counter()
        for _ in range(max(1, args.warmup)):  # the first call compiles
            step()
        sync()
        compile_seconds[name] = time.perf_counter() - start
        steps[name] = step

    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            sync()
            times[name].append(time.perf_counter() - start)

    memory: dict[str, int | None] = {}
    if not args.no_memory:
        for name in variants:
            if device.type == "cuda":
                memory[name] = measure_step_memory(name, device, B)
            else:
                memory[name] = _memory_in_subprocess(name, device, B, torch.get_num_threads())

    results: dict[str, Any] = {}
    for name in variants:
        dt = parse_variant(name)[1]
        seconds = statistics.median(times[name])
        achieved = flops[name] * B * T / seconds
        results[name] = {
            "tok_per_s": round(B * T / seconds, 1),
            "step_ms": round(1000 * seconds, 1),
            "achieved_gflops": round(achieved / 1e9, 1),
            "mfu_vs_own_dtype_peak": round(achieved / peaks[dt], 3),
            "fraction_of_bf16_peak": round(achieved / peaks["bf16"], 3),
            "flops_per_token": flops[name],
            "warmup_seconds": round(compile_seconds[name], 1),
        }
        if name in memory:
            results[name]["peak_step_memory_mb"] = None if memory[name] is None else round(memory[name] / 2**20, 1)
    ours = {k: v for k, v in results.items() if k.startswith("gpt-") and not k.endswith(PLAIN_LOSS)}
    best = max(ours, key=lambda k: ours[k]["tok_per_s"]) if ours else None
    hf = {k: v for k, v in results.items() if k.startswith("hf-")}
    best_hf = max(hf, key=lambda k: hf[k]["tok_per_s"]) if hf else None

    def ratio(a: str | None, b: str | None, key: str = "tok_per_s") -> float | None:
        if a not in results or b not in results or results[a].get(key) is None or not results[b].get(key):
            return None
        return round(results[a][key] / results[b][key], 3)

    hf_same_dtype = f"hf-{default_dt}-eager"
    plain = f"gpt-{default_dt}-eager{PLAIN_LOSS}"
    memory_ratio = ratio(default_name.replace("compiled", "eager"), plain, "peak_step_memory_mb")
    comparisons = {
        "default": default_name,
        "default_vs_hf_eager_same_dtype": ratio(default_name, hf_same_dtype),
        "best": best,
        "best_hf": best_hf,
        "best_vs_best_hf": ratio(best, best_hf),
        "best_fraction_of_bf16_peak": ours[best]["fraction_of_bf16_peak"] if best else None,
        "default_eager_vs_plain_loss_tok_per_s": ratio(default_name.replace("compiled", "eager"), plain),
        "default_eager_step_memory_vs_plain_loss": memory_ratio,
    }

    def met(value: float | None, goal: float, above: bool = True) -> bool | None:
        return None if value is None else (value >= goal if above else value <= goal)

    return {
        "benchmark": "train",
        "device": str(device),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "training_defaults": {"dtype": defaults.dtype_name, "compile": defaults.compile, "why": defaults.reason},
        "shape": {**SHAPE, "batch_size": B},
        "steps": args.steps,
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "native_bf16_matmul": native_bf16,
        "variants": results,
        **comparisons,
        "hf_transformers": hf_available,
        "goal_met": {
            "default_ge_1.0x_hf_eager_same_dtype": met(comparisons["default_vs_hf_eager_same_dtype"],
                                                       GOAL_DEFAULT_VS_HF_EAGER),
            "best_ge_1.3x_hf_best": met(comparisons["best_vs_best_hf"], GOAL_BEST_VS_HF_BEST),
            f"best_ge_{int(100 * GOAL_FRACTION_OF_BF16_PEAK)}pct_of_bf16_peak": met(
                comparisons["best_fraction_of_bf16_peak"], GOAL_FRACTION_OF_BF16_PEAK),
            "step_memory_ge_30pct_lower_than_plain_loss": met(memory_ratio, 1 - GOAL_MEMORY_REDUCTION, above=False),
        },
    }


if __name__ == "__main__":  # the memory subprocess: python -m embergpt.bench.train NAME DEVICE BATCH THREADS
    import torch

    _name, _device, _batch = sys.argv[1], torch.device(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(int(sys.argv[4]))
    print(json.dumps({"peak_step_bytes": measure_step_memory(_name, _device, _batch)}))
