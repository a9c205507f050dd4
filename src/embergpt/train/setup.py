"""Everything a run needs before its first step, gathered into one `RunSetup` that the step loop consumes.

    setup_pretraining(cfg, ctx)     text -> tokenizer -> dataset -> model (new, or the --resume checkpoint's)
    (embergpt.train.sft.setup_sft)  conversations -> the pretrained checkpoint's model, its vocabulary grown

Both go through `open_run` (threads, resume checks, the output directory) and `finish_setup` (device, compile,
DDP, optimizers, and the sampler, optimizer, RNG and metrics state of a resumed run).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from embergpt.checkpoint import Checkpoint, load_checkpoint
from embergpt.config import GPTConfig
from embergpt.device import resolve_dtype, training_defaults
from embergpt.errors import CheckpointError
from embergpt.train.checkpoints import (
    ResumePoint,
    TrainState,
    check_out_dir,
    load_optimizer_tensors,
    read_resume_point,
    restore_rng,
)
from embergpt.train.config import DEFAULT_BPE_VOCAB, TrainConfig
from embergpt.train.distributed import DistContext
from embergpt.train.evaluate import sample_prompt
from embergpt.train.optim import build_optimizers
from embergpt.train.progress import format_count
from embergpt.train.threads import ThreadTuner


@dataclass
class RunSetup:
    """A run ready to step: what `embergpt.train.loop.run_loop` needs and nothing it must rebuild."""

    cfg: TrainConfig
    ctx: DistContext
    dtype: torch.dtype
    tokenizer: Any
    dataset: Any  # .sampler("val", batch_size, seq_len, seed, rank, world_size) for evaluation
    sampler: Any  # the training batches: next_batch(), state_dict(), load_state_dict()
    model: nn.Module  # what the step calls: compiled and/or DDP-wrapped
    raw_model: nn.Module  # the plain module: saved, clipped, sampled from
    eval_model: nn.Module  # compiled but not DDP-wrapped
    model_config: GPTConfig
    optimizers: list[torch.optim.Optimizer]
    state: TrainState
    resumed: bool
    dense_targets: bool  # every target is a real token, so a step's target count is known without counting
    data_summary: str  # for the run's first line, e.g. "builtin:names: documents mode, 29k train documents"
    sample_prompt: list[int]
    stop_at_bos: bool  # samples end at <|bos|> (documents)
    sample_stop: str | None  # samples are cut at this text (e.g. "<|assistant_end|>")
    tuner: ThreadTuner | None
    wall_start: float  # perf_counter() when the set-up began: the result's wall time counts it

    @property
    def seq_len(self) -> int:
        return self.model_config.sequence_len


@dataclass
class OpenedRun:
    wall_start: float
    tuner: ThreadTuner | None
    resumed: Checkpoint | None
    point: ResumePoint | None


def open_run(cfg: TrainConfig, ctx: DistContext) -> OpenedRun:
    """CPU threads; the resume checkpoint and its training state (checked against the budget), or a clean
    output directory for a new run."""
    wall_start = time.perf_counter()
    tuner = None
    if ctx.device.type == "cpu" and cfg.threads == "auto":
        tuner = ThreadTuner(torch.get_num_threads())
    elif ctx.device.type == "cpu" and cfg.threads is not None:
        torch.set_num_threads(cfg.threads)

    if cfg.resume is None:  # every rank checks (and fails) alike; only rank 0 deletes
        check_out_dir(Path(cfg.out), cfg.overwrite, remove=ctx.is_main)
        return OpenedRun(wall_start, tuner, None, None)
    if not Path(cfg.resume).is_dir():
        raise CheckpointError(f"cannot resume: {cfg.resume} is not a checkpoint directory")
    resumed = load_checkpoint(cfg.resume)
    if resumed.metadata.get("format_version") == 1:  # its optimizer moments are in the old RoPE basis
        raise CheckpointError(f"{cfg.resume} is a format-1 checkpoint (the old RoPE direction): it loads for "
                              "generate/serve/eval/export, but its optimizer state cannot resume; start a new run")
    point = read_resume_point(cfg.resume)
    done = point.state
    if cfg.steps is not None and done.step >= cfg.steps:
        raise CheckpointError(f"{cfg.resume} is at step {done.step}, already past --steps {cfg.steps}: "
                              "pass a larger --steps to train further")
    if cfg.time_budget is not None and done.train_seconds >= cfg.time_budget:
        raise CheckpointError(f"{cfg.resume} has trained {done.train_seconds:.0f} s, its --time-budget "
                              f"{cfg.time_budget:g} s: pass a larger --time-budget or a --steps to train further")
    return OpenedRun(wall_start, tuner, resumed, point)


def finish_setup(
    cfg: TrainConfig,
    ctx: DistContext,
    opened: OpenedRun,
    *,
    tokenizer: Any,
    dataset: Any,
    sampler: Any,
    model: nn.Module,
    model_config: GPTConfig,
    dense_targets: bool,
    data_summary: str,
    sample_prompt: list[int],
    stop_at_bos: bool = False,
    sample_stop: str | None = None,
) -> RunSetup:
    """Place, compile and wrap `model`; build its optimizers; restore a resumed run's state."""
    device = ctx.device
    defaults = training_defaults(device)  # the dtype and compile setting where the flags say nothing
    dtype = resolve_dtype(cfg.dtype or defaults.dtype_name, device)
    model.to(device).train()
    raw_model = model
    if cfg.compile if cfg.compile is not None else defaults.compile:
        model = torch.compile(model)
    eval_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    optimizers = build_optimizers(raw_model, cfg)
    state = TrainState()
    point = opened.point
    if point is not None:
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
    return RunSetup(
        cfg=cfg, ctx=ctx, dtype=dtype, tokenizer=tokenizer, dataset=dataset,
        sampler=sampler, model=model, raw_model=raw_model, eval_model=eval_model, model_config=model_config,
        optimizers=optimizers, state=state, resumed=point is not None, dense_targets=dense_targets,
        data_summary=data_summary, sample_prompt=sample_prompt, stop_at_bos=stop_at_bos, sample_stop=sample_stop,
        tuner=opened.tuner, wall_start=opened.wall_start,
    )


# ------------------------------------------------------------------------------------------------ pretraining


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


def setup_pretraining(cfg: TrainConfig, ctx: DistContext) -> RunSetup:
    """A pretraining run of one model on `cfg.data` (new, or resumed from `cfg.resume`)."""
    from embergpt.data import TokenDataset, load_text
    from embergpt.ladder import LADDER

    opened = open_run(cfg, ctx)
    resumed = opened.resumed
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
    sampler = dataset.sampler(
        "train", cfg.batch_size, model_config.sequence_len, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size
    )
    n_data = len(dataset.train_ids) if mode == "window" else len(dataset.train_docs)
    return finish_setup(
        cfg, ctx, opened, tokenizer=tokenizer, dataset=dataset, sampler=sampler, model=model,
        model_config=model_config, dense_targets=mode == "window",
        data_summary=f"{cfg.data}: {mode} mode, {format_count(n_data)} train "
        f"{'tokens' if mode == 'window' else 'documents'}",
        sample_prompt=sample_prompt(tokenizer, mode == "documents"),
        stop_at_bos=mode == "documents",
    )
