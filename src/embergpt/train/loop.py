"""The step loop: `run_loop(RunSetup) -> TrainResult`, shared by pretraining and SFT (see `embergpt.train.setup`).

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
from pathlib import Path

import torch

from embergpt.device import autocast, dtype_name
from embergpt.ladder import describe as describe_model
from embergpt.train.checkpoints import (
    TrainState,
    interrupted_name,
    periodic_name,
    prune_periodic,
    save_training_checkpoint,
)
from embergpt.train.evaluate import evaluate, sample_texts, show_eval_progress, token_byte_lengths
from embergpt.train.flops import model_flops_per_token, peak_flops
from embergpt.train.interrupt import GracefulInterrupt
from embergpt.train.metrics import MetricsLog, plot_losses
from embergpt.train.optim import set_lr, set_muon_momentum
from embergpt.train.progress import ProgressBar, format_count, format_duration
from embergpt.train.result import TrainResult
from embergpt.train.schedule import lr_multiplier, muon_momentum, run_progress
from embergpt.train.setup import RunSetup

NUM_SAMPLES = 2


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


def run_loop(run: RunSetup) -> TrainResult:
    """Step, log, evaluate, sample and checkpoint until the budget is spent or a Ctrl-C; see the module."""
    cfg, ctx = run.cfg, run.ctx
    device, main, dtype = ctx.device, ctx.is_main, run.dtype
    out = Path(cfg.out)
    bar = ProgressBar(enabled=cfg.verbose and main)
    say = _Printer(cfg.verbose and main, bar)
    tuner, tokenizer, dataset, sampler = run.tuner, run.tokenizer, run.dataset, run.sampler
    model, raw_model, eval_model, optimizers = run.model, run.raw_model, run.eval_model, run.optimizers
    model_config, seq_len, state = run.model_config, run.seq_len, run.state

    metrics = MetricsLog(out / "metrics.jsonl" if main else None, state.metrics)
    state.metrics = metrics.records

    kind = getattr(raw_model, "kind", "gpt")
    num_params = sum(p.numel() for p in raw_model.parameters())
    flops_per_token = model_flops_per_token(raw_model)
    peak, peak_source = peak_flops(device, dtype) if main else (0.0, "")
    tokens_per_step = cfg.batch_size * seq_len * cfg.grad_accum
    total = cfg.total_steps
    token_bytes = token_byte_lengths(tokenizer)
    amp = lambda: autocast(device, dtype)  # noqa: E731

    say(
        f"{describe_model(kind, model_config, num_params)} | {run.data_summary}, {tokenizer.kind} vocab "
        f"{tokenizer.vocab_size}"
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
        + (f" | resuming from {cfg.resume} at step {state.step}" if run.resumed else "")
    )

    samples: list[str] = []

    def run_eval() -> None:
        result = evaluate(eval_model, dataset, cfg.batch_size, seq_len, cfg.eval_steps, token_bytes, ctx, amp(),
                          progress=show_eval_progress if main and cfg.verbose else None)
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
            samples = sample_texts(raw_model, tokenizer, run.sample_prompt, NUM_SAMPLES, cfg.sample_tokens,
                                   seed=cfg.seed + state.step, stop_at_bos=run.stop_at_bos)
        if run.sample_stop is not None:
            samples = [s.split(run.sample_stop)[0] for s in samples]
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
            if run.dense_targets:
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
        wall_seconds=time.perf_counter() - run.wall_start,
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


