"""`embergpt train`: flags (or EMBERGPT_<FLAG> environment variables) -> TrainConfig -> `embergpt.train.train`.

A flag wins over its environment variable; with --resume DIR, the checkpoint's own training config fills in
every flag not given; with --demo, the demo's settings do.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# (flag, type, help); the TrainConfig field is the flag's name with '-' -> '_'
FLAGS: list[tuple[str, str, Any, str]] = [
    ("data and model", "--data", str, "text source: builtin:shakespeare, builtin:names, a file, https://..., "
     "hf://... (default builtin:shakespeare, used whenever --data is not given)"),
    ("data and model", "--tokenizer", str, "char, bpe, or a tokenizer .json file (default char)"),
    ("data and model", "--vocab-size", int, "BPE vocabulary size (default 4096)"),
    ("data and model", "--data-mode", str, "window, documents or auto (default: documents for one-item-per-line text)"),
    ("data and model", "--model", str, "gpt, bigram, single-head, multi-head, or compare (all four, same budget) "
     "(default gpt)"),
    ("data and model", "--preset", str, "a model shape: tiny, check, shakespeare-char, bench, d12 (default: none, "
     "i.e. 4 layers, width 128, 4 heads, 128 positions; the shape flags below override it)"),
    ("data and model", "--n-layer", int, "transformer blocks (default: the preset's, else 4)"),
    ("data and model", "--n-head", int, "attention (query) heads (default: the preset's, else 4)"),
    ("data and model", "--n-kv-head", int, "key/value heads, 1 = MQA, n-head = MHA (default: the preset's, or n-head)"),
    ("data and model", "--n-embd", int, "model width (default: the preset's, else 128)"),
    ("data and model", "--dropout", float, "dropout probability (default 0)"),
    ("batch and schedule", "--batch-size", int, "global sequences per micro-step, split across ranks (default 32)"),
    ("batch and schedule", "--seq-len", int, "tokens per sequence (default: the preset's)"),
    ("batch and schedule", "--grad-accum", int, "micro-steps per optimizer step (default 1)"),
    ("batch and schedule", "--steps", int, "optimizer steps (default 1000 unless --time-budget is given)"),
    ("batch and schedule", "--time-budget", float, "seconds of training (evaluation excluded); the lr follows it "
     "(default: none)"),
    ("batch and schedule", "--lr", float, "learning rate (default: adamw 3e-3; muon 0.02 for the hidden matrices)"),
    ("batch and schedule", "--warmup", int, "linear warm-up steps (default 0)"),
    ("batch and schedule", "--lr-schedule", str, "cosine, linear or constant (default cosine)"),
    ("batch and schedule", "--min-lr-frac", float, "final lr as a fraction of --lr (default 0.1)"),
    ("batch and schedule", "--weight-decay", float, "decoupled weight decay of matrices (default 0)"),
    ("optimizer and precision", "--optimizer", str, "adamw, or muon (Muon for the hidden matrices, AdamW for "
     "embeddings and head) (default adamw)"),
    ("optimizer and precision", "--grad-clip", float, "max global gradient norm, 0 = off (default 1.0)"),
    ("optimizer and precision", "--dtype", str, "float32 or bfloat16 autocast (default: bfloat16 on CUDA, else fp32)"),
    ("optimizer and precision", "--compile", bool, "torch.compile the model; checkpoints still hold the plain one "
     "(default off)"),
    ("evaluation", "--eval-interval", int, "steps between evaluations, 0 = only at the end (default 100)"),
    ("evaluation", "--eval-seconds", float, "also evaluate every S seconds of training (default off; compare: "
     "budget / 12)"),
    ("evaluation", "--eval-steps", int, "validation batches per evaluation (default 20)"),
    ("evaluation", "--sample-interval", int, "steps between printed samples (default: at each evaluation)"),
    ("evaluation", "--sample-tokens", int, "tokens per printed sample (default 200)"),
    ("run", "--device", str, "cpu, cuda, cuda:N or mps (default: the best available)"),
    ("run", "--threads", "threads", "CPU threads: N, or auto (the faster of 1 and all cores, re-checked) "
     "(default: torch's)"),
    ("run", "--seed", int, "random seed (default 1337)"),
    ("run", "--out", str, "output directory (default runs/train; with --resume, the checkpoint's parent)"),
    ("run", "--checkpoint-interval", int, "save OUT/step-NNNNNN every N steps (default 0: final only)"),
    ("run", "--checkpoint-keep", int, "periodic checkpoints kept, 0 = all (default 3)"),
    ("run", "--resume", str, "continue from this checkpoint directory, exactly on CPU (default: a new run)"),
    ("run", "--overwrite", bool, "replace a run already in OUT; without it, such an OUT is an error (default off)"),
    ("run", "--demo", bool, "the `make demo` run: char-level Shakespeare on the CPU, ~2 minutes (default off)"),
    ("run", "--quiet", bool, "no progress bar, no samples: only errors and the final summary (default off)"),
]


def threads(value: str) -> int | str:
    """--threads: a positive integer or "auto"."""
    if value == "auto":
        return value
    n = int(value)
    if n <= 0:
        raise ValueError(value)
    return n


def env_name(flag: str) -> str:
    return "EMBERGPT_" + flag.lstrip("-").replace("-", "_").upper()


def _bool_from_env(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ValueError(f"{name}={value!r}: use 1/0, true/false, yes/no or on/off")


DESCRIPTION = """Train a GPT (or a teaching-ladder model) on a text source and save checkpoints in --out.

Without --data it trains on builtin:shakespeare. Every flag can also be set by the environment variable shown in
[brackets]; a flag wins over its variable. Progress (loss, tok/s, ETA) is shown while it runs; each evaluation
prints its own line."""

EXAMPLE = """examples:
  embergpt train --data builtin:names --steps 300 --out runs/names        (about 2 minutes on a 2-core CPU)
  embergpt train --demo                                                     (the `make demo` run, ~2 minutes)
  embergpt train --resume runs/names/final --steps 600                      (continue a run, bit for bit on CPU)"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, FLAGS)


def add_flags(parser: argparse.ArgumentParser, flags: list[tuple[str, str, Any, str]]) -> None:
    """Add `flags` (entries of FLAGS) to `parser`, in their groups (`embergpt sft` shares most of them)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for group, flag, kind, help_text in flags:
        kind = threads if kind == "threads" else kind
        g = groups.setdefault(group, parser.add_argument_group(group))
        help_text += f" [{env_name(flag)}]"
        if kind is bool:
            g.add_argument(flag, action="store_true", default=None, help=help_text)
        else:
            metavar = flag.lstrip("-").split("-")[-1].upper()
            g.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def explicit_settings(args: argparse.Namespace, flags: list[tuple[str, str, Any, str]] = FLAGS) -> dict[str, Any]:
    """Flags given on the command line, then EMBERGPT_<FLAG> variables for the others (ValueError if malformed)."""
    settings: dict[str, Any] = {}
    for _, flag, kind, _ in flags:
        kind = threads if kind == "threads" else kind
        field = flag.lstrip("-").replace("-", "_")
        value = getattr(args, field, None)
        if value is None and os.environ.get(env_name(flag)) is not None:
            raw = os.environ[env_name(flag)]
            try:
                value = _bool_from_env(env_name(flag), raw) if kind is bool else kind(raw)
            except ValueError:
                raise ValueError(f"{env_name(flag)}={raw!r} is not a valid {kind.__name__}") from None
            if kind is bool and not value:
                value = None
        if value is not None:
            settings[field] = value
    return settings


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig these flags (and environment variables) describe."""
    from embergpt.train import TrainConfig, demo_config

    settings = explicit_settings(args)
    demo = settings.pop("demo", False)
    settings["verbose"] = not settings.pop("quiet", False)  # not inherited from a resumed run's config
    resume = settings.get("resume")
    if demo and resume is not None:
        raise ValueError("--demo starts a new run; to continue one, pass --resume alone (e.g. --resume "
                         "runs/shakespeare/final --steps 1000)")
    if resume is not None:
        return TrainConfig.from_checkpoint(resume, **settings)
    return demo_config(**settings) if demo else TrainConfig(**settings)


def run(args: argparse.Namespace) -> int:
    from embergpt.train import train
    from embergpt.train.distributed import is_main_process

    cfg = config_from_args(args)
    result = train(cfg)
    if not is_main_process():
        return result.exit_code
    if result.interrupted:
        return result.exit_code
    if result.ladder is None and result.checkpoint is not None:
        val = f"val loss {result.val_loss:.4f}" if result.val_loss is not None else "no validation"
        print(
            f"done: {result.step} steps, {result.train_seconds:.0f} s of training, {val}, "
            f"{result.tok_per_s:,.0f} tok/s (median)"
        )
        print(f"checkpoint: {result.checkpoint}")
        print(f"serve it:   embergpt serve --checkpoint {result.checkpoint}")
    sys.stdout.flush()
    return result.exit_code
