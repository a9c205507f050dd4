"""The training loop: `train(TrainConfig) -> TrainResult`, the one function behind `embergpt train`.

One optimizer step:
    lr, momentum <- schedule(step, progress)
    grad_accum micro-batches of the global batch (each DDP rank takes its rows of each)
    loss of each, weighted by its share of the step's target tokens, backward (DDP all-reduces on the last)
    clip the global grad norm, step every optimizer, zero the grads
then log, and at intervals evaluate, print samples, checkpoint. A first Ctrl-C/SIGTERM ends the step, saves
OUT/interrupted-step-N and returns with `interrupted=True` (the CLI exits 130).

Exact resume: every source of randomness is either seeded per batch (the samplers, the validation batches, the
samples) or saved (the torch RNG that dropout draws from), and the optimizer state, the schedule position and
the metrics history are saved bit for bit, so on CPU a resumed run reproduces the uninterrupted one exactly.
With a time budget the schedule follows the clock and resuming is no longer bitwise.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from embergpt.checkpoint import load_checkpoint
from embergpt.device import autocast, dtype_name, resolve_dtype
from embergpt.errors import CheckpointError
from embergpt.train.checkpoints import (
    TrainState,
    check_out_dir,
    interrupted_name,
    load_optimizer_tensors,
    periodic_name,
    prune_periodic,
    read_resume_point,
    restore_rng,
    save_training_checkpoint,
)
from embergpt.train.config import DEFAULT_BPE_VOCAB, TrainConfig
from embergpt.train.distributed import DistContext, init_distributed, shutdown_distributed
from embergpt.train.evaluate import evaluate, generate_samples, sample_prompt, token_byte_lengths
from embergpt.train.flops import model_flops_per_token, peak_flops
from embergpt.train.interrupt import GracefulInterrupt
from embergpt.train.metrics import MetricsLog, plot_losses
from embergpt.train.optim import build_optimizers, set_lr, set_muon_momentum
from embergpt.train.progress import ProgressBar, format_count, format_duration
from embergpt.train.schedule import lr_multiplier, muon_momentum, run_progress
from embergpt.train.threads import ThreadTuner

NUM_SAMPLES = 2


@dataclass
class TrainResult:
    out_dir: Path
    model_kind: str
    num_params: int
    step: int
    checkpoint: Path | None  # OUT/final, or OUT/interrupted-step-N
    interrupted: bool
    train_loss: float | None
    val_loss: float | None
    val_bpb: float | None
    train_seconds: float  # time in training steps (what --time-budget counts)
    wall_seconds: float  # everything: data, evaluation, checkpoints
    tokens: int
    tok_per_s: float  # median over the run's steps
    mfu: float | None
    metrics_path: Path | None
    plot_path: Path | None
    samples: list[str] = field(default_factory=list)
    ladder: list[TrainResult] | None = None  # --model compare: one result per model

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 0


def train(cfg: TrainConfig) -> TrainResult:
    """Train as `cfg` says (one model, or `model="compare"`: the whole teaching ladder) and return the outcome.

    Under torchrun this joins the process group; rank 0 logs and checkpoints, every rank returns a result.
    """
    ctx = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.model == "compare":
            from embergpt.train.compare import compare_ladder

            return compare_ladder(cfg, ctx)
        return run_training(cfg, ctx)
    finally:
        torch.set_num_threads(threads)  # --threads is this run's setting, not the process's
        shutdown_distributed(ctx)


# ------------------------------------------------------------------------------------------------ set-up


def detect_data_mode(text: str) -> str:
    """"documents" for corpora of one short item per line (names.txt: no blank lines, short one-word lines),
    "window" for running text."""
    lines = text.rstrip("\n").split("\n")
    if len(lines) < 2 or any(not line.strip() for line in lines):
        return "window"
    lengths = sorted(len(line) for line in lines)
    words = statistics.median(len(line.split()) for line in lines)
    return "documents" if lengths[int(0.95 * (len(lengths) - 1))] <= 64 and words <= 4 else "window"


def build_tokenizer(cfg: TrainConfig, text: str) -> Any:
    """char: the text's characters; bpe: trained on all but the validation tail; else: a tokenizer file."""
    from embergpt.tokenizer import BPETokenizer, CharTokenizer, heldout_split, load_tokenizer

    if cfg.tokenizer == "char":
        return CharTokenizer.from_text(text)
    if cfg.tokenizer == "bpe":
        head, _ = heldout_split(text, cfg.val_fraction)
        return BPETokenizer.train(head, cfg.vocab_size or DEFAULT_BPE_VOCAB)
    return load_tokenizer(cfg.tokenizer)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)  # overlaps the copy with the running step
    return t.to(device)


class _Printer:
    """stdout for rank 0 only, keeping the progress bar out of the way."""

    def __init__(self, enabled: bool, bar: ProgressBar) -> None:
        self.enabled, self.bar = enabled, bar

    def __call__(self, message: str = "") -> None:
        if self.enabled:
            self.bar.clear()
            print(message, flush=True)


# ------------------------------------------------------------------------------------------------ the run


def run_training(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    """One model's run on an already set-up (possibly distributed) context. See `train`."""
    from embergpt.data import TokenDataset, load_text
    from embergpt.ladder import LADDER

    wall_start = time.perf_counter()
    device, main = ctx.device, ctx.is_main
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)
    bar = ProgressBar(enabled=cfg.verbose and main)
    say = _Printer(cfg.verbose and main, bar)

    tuner = None
    if device.type == "cpu" and cfg.threads == "auto":
        tuner = ThreadTuner(torch.get_num_threads())
    elif device.type == "cpu" and cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    resumed = None
    if cfg.resume is not None:
        if not Path(cfg.resume).is_dir():
            raise CheckpointError(f"cannot resume: {cfg.resume} is not a checkpoint directory")
        resumed = load_checkpoint(cfg.resume)
        if resumed.metadata.get("format_version") == 1:  # its optimizer moments are in the old RoPE basis
            raise CheckpointError(f"{cfg.resume} is a format-1 checkpoint (the old RoPE direction): it loads for "
                                  "generate/serve/export, but its optimizer state cannot resume; start a new run")
        point = read_resume_point(cfg.resume)
        done = point.state
        if cfg.steps is not None and done.step >= cfg.steps:
            raise CheckpointError(f"{cfg.resume} is at step {done.step}, already past --steps {cfg.steps}: "
                                  "pass a larger --steps to train further")
        if cfg.time_budget is not None and done.train_seconds >= cfg.time_budget:
            raise CheckpointError(f"{cfg.resume} has trained {done.train_seconds:.0f} s, its --time-budget "
                                  f"{cfg.time_budget:g} s: pass a larger --time-budget or a --steps to train further")
    else:  # every rank checks (and fails) alike; only rank 0 deletes
        check_out_dir(out, cfg.overwrite, remove=main)

    torch.manual_seed(cfg.seed)
    text = load_text(cfg.data)
    tokenizer = resumed.tokenizer if resumed is not None else build_tokenizer(cfg, text)
    mode = detect_data_mode(text) if cfg.data_mode == "auto" else cfg.data_mode
    dataset = TokenDataset.build(text, tokenizer, cfg.val_fraction, mode=mode, seed=cfg.seed)

    longest = None
    if mode == "documents":
        longest = max(len(d) for d in [*dataset.train_docs, *dataset.val_docs])
    model_config = cfg.model_config(tokenizer.vocab_size, longest)
    if resumed is not None:
        kind = resumed.metadata.get("model", {}).get("kind", "gpt")
        if kind != cfg.model or resumed.config != model_config:
            raise CheckpointError(
                f"{cfg.resume} holds a {kind} model of a different shape than this config asks for; "
                "resume with the flags it was trained with (or none)"
            )
        model: nn.Module = resumed.model
    else:
        model = LADDER[cfg.model](model_config)
    model.to(device).train()
    raw_model = model
    seq_len = model_config.sequence_len
    if cfg.compile:
        model = torch.compile(model)
    eval_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizers = build_optimizers(raw_model, cfg)
    sampler = dataset.sampler("train", cfg.batch_size, seq_len, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    state = TrainState()
    if resumed is not None:
        state = point.state
        if len(point.optimizer_skeletons) != len(optimizers):
            raise CheckpointError(f"{cfg.resume} was trained with another optimizer; resume with the same --optimizer")
        for opt, tensors, skeleton in zip(optimizers, point.optimizer_tensors, point.optimizer_skeletons):
            load_optimizer_tensors(opt, {k: v.to(device) for k, v in tensors.items()}, skeleton)
        try:
            sampler.load_state_dict(state.sampler)
        except ValueError as e:
            raise CheckpointError(f"{cfg.resume}: {e}") from None
        restore_rng(point.rng, device)
        if ctx.rank > 0:
            torch.manual_seed(cfg.seed + 1000003 * ctx.rank + state.step)  # dropout differs per rank, as before
    elif ctx.rank > 0:
        torch.manual_seed(cfg.seed + 1000003 * ctx.rank)
    metrics = MetricsLog(out / "metrics.jsonl" if main else None, state.metrics)
    state.metrics = metrics.records

    kind = getattr(raw_model, "kind", "gpt")
    num_params = sum(p.numel() for p in raw_model.parameters())
    flops_per_token = model_flops_per_token(raw_model)
    peak, peak_source = peak_flops(device, dtype) if main else (0.0, "")
    tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum
    total = cfg.total_steps
    token_bytes = token_byte_lengths(tokenizer)
    prompt = sample_prompt(tokenizer, mode == "documents")
    amp = lambda: autocast(device, dtype)  # noqa: E731

    n_data = len(dataset.train_ids) if mode == "window" else len(dataset.train_docs)
    say(
        f"{kind}: {num_params / 1e6:.2f}M parameters ({model_config.n_layer} layers, d={model_config.n_embd}, "
        f"{model_config.n_head} heads) | {cfg.data}: {mode} mode, {format_count(n_data)} train "
        f"{'tokens' if mode == 'window' else 'documents'}, {tokenizer.kind} vocab {tokenizer.vocab_size}"
    )
    budget = f"{total} steps" if total is not None else ""
    if cfg.time_budget is not None:
        budget += (" or " if budget else "") + f"{cfg.time_budget:g} s"
    say(
        f"device {device} ({dtype_name(dtype)}{', compiled' if cfg.compile else ''}"
        f"{f', {torch.get_num_threads()} threads' if device.type == 'cpu' else ''}"
        f"{f', {ctx.world_size} ranks' if ctx.enabled else ''}) | {cfg.optimizer} | batch {cfg.batch_size} x "
        f"{seq_len} x {cfg.grad_accum} = {format_count(tokens_per_step)} tokens/step | {budget} | "
        f"MFU against {peak / 1e9:.0f} GFLOP/s ({peak_source})"
        + (f" | resuming from {cfg.resume} at step {state.step}" if resumed is not None else "")
    )

    samples: list[str] = []

    def run_eval() -> None:
        result = evaluate(eval_model, dataset, cfg.batch_size, seq_len, cfg.eval_steps, token_bytes, ctx, amp())
        record = {"kind": "eval", "step": state.step, **result, "elapsed": state.train_seconds}
        if main:
            metrics.log(record)
            bpb = f" | val bpb {result['val_bpb']:.4f}" if result["val_bpb"] is not None else ""
            say(f"step {state.step}: val loss {result['val_loss']:.4f}{bpb}")
            plot_losses(metrics.records, out / "loss.png", title=f"{kind} on {cfg.data}")

    def print_samples() -> None:
        nonlocal samples
        if not (main and cfg.verbose):
            return
        with amp():
            samples = generate_samples(
                raw_model, tokenizer, prompt, NUM_SAMPLES, cfg.sample_tokens, seq_len, device,
                seed=cfg.seed + state.step, stop_at_bos=mode == "documents",
            )
        for i, s in enumerate(samples):
            say(f"--- sample {i + 1} (step {state.step}) ---\n{s.strip()}")

    def save(path: Path, interrupted: bool = False) -> Path:
        if main:
            save_training_checkpoint(
                path, raw_model, tokenizer, cfg.to_dict(), optimizers,
                TrainState(state.step, state.train_seconds, state.tokens, sampler.state_dict(), state.metrics),
                device, interrupted=interrupted,
            )
        return path

    step_times: list[float] = []
    tok_per_s_ema = 0.0
    checkpoint: Path | None = None
    interrupted = False
    with GracefulInterrupt(announce=cfg.verbose and main) as interrupt:
        if state.step == 0 and (cfg.eval_interval > 0 or cfg.eval_seconds):
            run_eval()
        next_eval_seconds = _next_multiple(state.train_seconds, cfg.eval_seconds)
        # the same on every rank: the state is the same (fresh, or restored from one checkpoint)
        done = (total is not None and state.step >= total) or (
            cfg.time_budget is not None and state.train_seconds >= cfg.time_budget
        )
        while not done:
            t0 = time.perf_counter()
            progress = run_progress(state.step, total, cfg.warmup, state.train_seconds, cfg.time_budget)
            set_lr(optimizers, lr_multiplier(state.step, progress, cfg.warmup, cfg.lr_schedule, cfg.min_lr_frac))
            set_muon_momentum(optimizers, muon_momentum(state.step))
            lr = _main_lr(optimizers)

            batches = [sampler.next_batch() for _ in range(cfg.grad_accum)]
            counts = [float((y >= 0).sum()) for _, y in batches]
            if mode == "window":
                global_count = float(tokens_per_step)  # every target is a real token
            else:
                global_count = float(ctx.all_reduce(torch.tensor(sum(counts), device=device)).item())
            loss_sum = torch.zeros((), device=device)
            for i, (x, y) in enumerate(batches):
                x, y = _to_device(x, device), _to_device(y, device)
                # the step's loss is the mean over ALL its target tokens (every micro-batch, every rank)
                weight = counts[i] / global_count
                sync = model.no_sync() if ctx.enabled and i < len(batches) - 1 else contextlib.nullcontext()
                with sync:
                    with amp():
                        loss = model(x, y)
                    (loss * (weight * ctx.world_size)).backward()  # DDP averages over ranks: undo its 1/W
                loss_sum += loss.detach().float() * weight
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip))
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            train_loss = float(ctx.all_reduce(loss_sum).item())  # also waits for the device: honest timings
            if not math.isfinite(train_loss):
                raise ValueError(
                    f"training diverged: the loss is {train_loss} at step {state.step + 1}; lower --lr, "
                    "raise --warmup or keep --grad-clip on"
                )

            dt = time.perf_counter() - t0
            state.step += 1
            state.train_seconds += dt
            state.tokens += tokens_per_step
            step_times.append(dt)
            tok_per_s = tokens_per_step / dt
            tok_per_s_ema = tok_per_s if len(step_times) == 1 else 0.9 * tok_per_s_ema + 0.1 * tok_per_s
            mfu = flops_per_token * tok_per_s / peak if peak > 0 else None
            if tuner is not None and tuner.after_step(dt, state.train_seconds):
                say(f"CPU threads -> {tuner.threads} (the faster count now: the cores are shared)")

            # every rank must agree on what happens next: any rank's signal counts, rank 0's clock decides
            flags = torch.tensor(
                [
                    float(interrupt.requested),
                    float(main and cfg.time_budget is not None and state.train_seconds >= cfg.time_budget),
                    float(total is not None and state.step >= total),
                    float(main and state.train_seconds >= next_eval_seconds),
                ],
                device=device,
            )
            stop_signal, time_up, steps_done, eval_time = (bool(v) for v in ctx.all_reduce(flags, op="max").tolist())
            done = time_up or steps_done

            if main:
                metrics.log(
                    {
                        "kind": "train",
                        "step": state.step,
                        "train_loss": train_loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens": state.tokens,
                        "tok_per_s": tok_per_s,
                        "mfu": mfu,
                        "elapsed": state.train_seconds,
                    }
                )
                eta = None
                if cfg.time_budget is not None:
                    eta = max(0.0, cfg.time_budget - state.train_seconds)
                if total is not None:
                    steps_eta = (total - state.step) * statistics.fmean(step_times[-50:])
                    eta = steps_eta if eta is None else min(eta, steps_eta)
                ema_mfu = flops_per_token * tok_per_s_ema / peak if peak > 0 else None
                shown = run_progress(state.step, total, 0, state.train_seconds, cfg.time_budget)
                bar.update(state.step, total, shown, train_loss, tok_per_s_ema, ema_mfu, eta, force=done)

            if not done:
                if (cfg.eval_interval > 0 and state.step % cfg.eval_interval == 0) or eval_time:
                    next_eval_seconds = _next_multiple(state.train_seconds, cfg.eval_seconds)
                    run_eval()
                    if cfg.sample_interval == 0:
                        print_samples()
                if cfg.sample_interval > 0 and state.step % cfg.sample_interval == 0:
                    print_samples()
                if cfg.checkpoint_interval > 0 and state.step % cfg.checkpoint_interval == 0:
                    save(out / periodic_name(state.step))
                    if main:
                        prune_periodic(out, cfg.checkpoint_keep)
                if stop_signal:
                    interrupted = True
                    break

        if interrupted:
            checkpoint = save(out / interrupted_name(state.step), interrupted=True)
            if main:
                plot_losses(metrics.records, out / "loss.png", title=f"{kind} on {cfg.data}")
                bar.clear()
                # printed even when quiet: the one thing a user must know after an interrupt
                print(f"interrupted at step {state.step}: saved {checkpoint}", flush=True)
                print(f"resume with: embergpt train --resume {checkpoint}", flush=True)
        else:
            if state.step > 0 or not (cfg.eval_interval > 0 or cfg.eval_seconds):
                run_eval()
            print_samples()
            checkpoint = save(out / "final")
            say(f"saved {checkpoint} (step {state.step}, {format_duration(state.train_seconds)} of training)")
    ctx.barrier()
    bar.finish()

    last_train, last_eval = metrics.last("train"), metrics.last("eval")
    tok_per_s = tokens_per_step / statistics.median(step_times) if step_times else 0.0
    return TrainResult(
        out_dir=out,
        model_kind=kind,
        num_params=num_params,
        step=state.step,
        checkpoint=checkpoint,
        interrupted=interrupted,
        train_loss=last_train["train_loss"] if last_train else None,
        val_loss=last_eval["val_loss"] if last_eval else None,
        val_bpb=last_eval["val_bpb"] if last_eval else None,
        train_seconds=state.train_seconds,
        wall_seconds=time.perf_counter() - wall_start,
        tokens=state.tokens,
        tok_per_s=tok_per_s,
        mfu=flops_per_token * tok_per_s / peak if peak > 0 else None,
        metrics_path=out / "metrics.jsonl" if main else None,
        plot_path=out / "loss.png" if main else None,
        samples=samples,
    )


def _next_multiple(seconds: float, interval: float | None) -> float:
    """The next multiple of `interval` after `seconds` (infinity without an interval)."""
    return math.inf if not interval else (math.floor(seconds / interval) + 1) * interval


def _main_lr(optimizers: list[torch.optim.Optimizer]) -> float:
    """The lr `--lr` sets, as scheduled now: Muon's when present, else AdamW's first group."""
    from embergpt.train.muon import Muon

    opt = next((o for o in optimizers if isinstance(o, Muon)), optimizers[0])
    return float(opt.param_groups[0]["lr"])


