"""`embergpt bench train`: training-step throughput and MFU for one fixed shape, against the matmul peak and
HF transformers' Llama measured in the same run.

Shape: vocab 8192, seq 512, 6 layers, d=384, 6 heads, batch 8 (the `bench` preset at seq 512). One step =
forward + backward + fused AdamW step on random tokens. Variants: fp32 and bf16 autocast, eager and
torch.compile'd (HF: eager, unless --hf-compile). The peaks are the best GFLOP/s of square fp32 and bf16
matmuls (1024 and 2048) measured first.

MFU = (model FLOPs per token x tok/s) / peak, each model counting its own FLOPs (6 x non-embedding parameters +
the attention term); the goal is >= 70% of the bf16 matmul peak. The HF baseline is a LlamaForCausalLM of the
same width, depth, heads and vocab with intermediate_size 1024, so that its SwiGLU MLP (3 matrices) has as many
parameters as our ReLU² MLP (2 matrices of 4d). Timings are medians over steps taken round-robin across the
variants, so a burst of load on a shared machine hits every contender alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

GOAL_FRACTION_OF_BF16_PEAK = 0.70
SHAPE = dict(vocab_size=8192, sequence_len=512, n_layer=6, n_head=6, n_kv_head=6, n_embd=384)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=8, metavar="N", help="sequences per step (default 8)")
    parser.add_argument("--steps", type=int, default=5, metavar="N", help="timed steps per variant (default 5)")
    parser.add_argument("--warmup", type=int, default=2, metavar="N", help="untimed steps first (default 2)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the best available)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--no-hf", action="store_true", help="skip the HF transformers Llama baseline")
    parser.add_argument("--hf-compile", action="store_true", help="also time HF's Llama under torch.compile")
    parser.add_argument("--variants", default=None, help="comma-separated subset, e.g. gpt-fp32-eager,hf-bf16-eager")


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from embergpt.config import GPTConfig
    from embergpt.device import autocast, resolve_device
    from embergpt.model import GPT
    from embergpt.train.flops import measure_matmul_flops, model_flops_per_token

    for flag, value, least in (("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1),
                               ("--warmup", args.warmup, 0)):
        if value < least:
            raise ValueError(f"{flag} must be >= {least}, got {value}")
    device = resolve_device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    B, T = args.batch_size, SHAPE["sequence_len"]

    hf_available = False
    if not args.no_hf:
        try:
            import transformers  # noqa: F401

            hf_available = True
        except ImportError:
            pass

    variants: dict[str, tuple[str, str, bool]] = {}
    for family in ["gpt"] + (["hf"] if hf_available else []):
        for dt in ("fp32", "bf16"):
            compile_it = not args.no_compile and (family == "gpt" or args.hf_compile)
            for compiled in [False] + ([True] if compile_it else []):
                variants[f"{family}-{dt}-{'compiled' if compiled else 'eager'}"] = (family, dt, compiled)
    if args.variants is not None:
        wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in wanted if v not in variants]
        if unknown or not wanted:
            raise ValueError(
                f"unknown --variants {', '.join(unknown) or repr(args.variants)}; choose from {', '.join(variants)}"
            )
        variants = {k: v for k, v in variants.items() if k in wanted}

    # measured once the flags are known to be good: this takes a few seconds
    peaks = {
        name: max(measure_matmul_flops(device, dtype, size, seconds=1.0) for size in (1024, 2048))
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }

    torch.manual_seed(0)
    x = torch.randint(0, SHAPE["vocab_size"], (B, T), device=device)
    y = torch.randint(0, SHAPE["vocab_size"], (B, T), device=device)
    steps: dict[str, Callable[[], None]] = {}
    flops: dict[str, int] = {}
    compile_seconds: dict[str, float] = {}
    for name, (family, dt, compiled) in variants.items():
        dtype = torch.float32 if dt == "fp32" else torch.bfloat16
        if family == "gpt":
            model: Any = GPT(GPTConfig(**SHAPE)).to(device)
            flops[name] = model_flops_per_token(model)
            forward = model
        else:
            model = _llama(SHAPE["vocab_size"], T, SHAPE["n_layer"], SHAPE["n_head"], SHAPE["n_embd"]).to(device)
            flops[name] = _hf_flops_per_token(model, T)

            def forward(inp: Any, tgt: Any, model: Any = model) -> Any:
                return model(input_ids=inp, labels=tgt).loss

        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
        fn = torch.compile(forward) if compiled else forward

        def step(fn: Any = fn, opt: Any = opt, dtype: Any = dtype) -> None:
            with autocast(device, dtype) if dtype != torch.float32 else contextlib.nullcontext():
                loss = fn(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

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

    results: dict[str, Any] = {}
    for name, (_, dt, _) in variants.items():
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
    ours = {k: v for k, v in results.items() if k.startswith("gpt-")}
    best = max(ours, key=lambda k: ours[k]["fraction_of_bf16_peak"]) if ours else None
    hf = {k: v for k, v in results.items() if k.startswith("hf-")}
    best_hf = max(hf, key=lambda k: hf[k]["fraction_of_bf16_peak"]) if hf else None
    summary: dict[str, Any] = {
        "benchmark": "train",
        "device": str(device),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch_version": torch.__version__,
        "shape": {**SHAPE, "batch_size": B},
        "steps": args.steps,
        "peak_gflops": {k: round(v / 1e9, 1) for k, v in peaks.items()},
        "variants": results,
        "best": best,
        "best_fraction_of_bf16_peak": ours[best]["fraction_of_bf16_peak"] if best else None,
        "hf_transformers": hf_available,
    }
    if best_hf and best:
        summary["best_hf"] = best_hf
        summary["speedup_vs_best_hf"] = round(ours[best]["tok_per_s"] / hf[best_hf]["tok_per_s"], 2)
    summary["goal_met"] = {
        f"ge_{int(100 * GOAL_FRACTION_OF_BF16_PEAK)}pct_of_bf16_peak": bool(
            best and ours[best]["fraction_of_bf16_peak"] >= GOAL_FRACTION_OF_BF16_PEAK
        )
    }
    return summary
