"""`embergpt sft CHECKPOINT`: fine-tune a pretrained checkpoint on conversations -> `embergpt.train.train`.

The training flags are `embergpt train`'s (batch, schedule, optimizer, evaluation, run; not the model's shape,
which is the checkpoint's). With `--data builtin:chat-tasks` (the default) the run ends with the accuracy per
task on held-out items (`--eval-items`, 0 to skip), which `embergpt eval --tasks chat` also reports.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from embergpt.commands import train as train_command

# the model is the checkpoint's: its shape, tokenizer and context are not flags here
_SHAPE_FLAGS = {"--tokenizer", "--vocab-size", "--data-mode", "--model", "--preset", "--n-layer", "--n-head",
                "--n-kv-head", "--n-embd", "--dropout", "--seq-len", "--demo"}
SFT_FLAGS = [f for f in train_command.FLAGS if f[1] not in _SHAPE_FLAGS]
DEFAULT_EVAL_ITEMS = 50


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", nargs="?",
                        help="the pretrained checkpoint directory (no default; not with --resume)")
    parser.add_argument("--eval-items", type=int, default=DEFAULT_EVAL_ITEMS, metavar="N",
                        help=f"held-out items per chat task scored at the end (default {DEFAULT_EVAL_ITEMS}; "
                             "builtin:chat-tasks only)")
    train_command.add_flags(parser, SFT_FLAGS)
    parser.epilog = ("data: builtin:chat-tasks (default) or JSONL conversations from a file, https://... or hf://...\n"
                     "example (about 4 minutes on 2 CPU cores):\n"
                     "  embergpt sft runs/shakespeare/final --out runs/chat --time-budget 240 --steps 800")


def config_from_args(args: argparse.Namespace) -> Any:
    from embergpt.train import TrainConfig
    from embergpt.train.sft import sft_config

    settings = train_command.explicit_settings(args, SFT_FLAGS)
    settings["verbose"] = not settings.pop("quiet", False)
    resume = settings.get("resume")
    if resume is not None:
        if args.checkpoint is not None:
            raise ValueError("--resume continues an SFT run from its own checkpoint; drop the CHECKPOINT argument")
        return TrainConfig.from_checkpoint(resume, **settings)
    if args.checkpoint is None:
        raise ValueError("name the pretrained checkpoint to start from: embergpt sft runs/shakespeare/final")
    return sft_config(args.checkpoint, **settings)


def run(args: argparse.Namespace) -> int:
    from embergpt.chat.evaluate import check_items
    from embergpt.chat.tasks import SOURCE
    from embergpt.train import train
    from embergpt.train.distributed import is_main_process

    check_items(args.eval_items, "--eval-items", allow_zero=True)  # before training, not after it
    cfg = config_from_args(args)
    if cfg.stage != "sft":
        raise ValueError(f"{cfg.resume} is not an SFT run; continue it with embergpt train --resume")
    result = train(cfg)
    if not is_main_process() or result.interrupted:
        return result.exit_code
    val = f"val loss {result.val_loss:.4f}" if result.val_loss is not None else "no validation"
    print(f"done: {result.step} steps, {result.train_seconds:.0f} s of training, {val}")
    print(f"checkpoint: {result.checkpoint}")
    if cfg.data == SOURCE and args.eval_items > 0 and result.checkpoint is not None:
        import torch

        from embergpt.chat.evaluate import evaluate_checkpoint, format_accuracy

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # decode GEMMs this small gain nothing from more; on a busy CPU OpenMP spins (25x)
        try:
            print(format_accuracy(evaluate_checkpoint(result.checkpoint, args.eval_items)))
        finally:
            torch.set_num_threads(threads)
    print(f"chat with it: embergpt chat --checkpoint {result.checkpoint}")
    sys.stdout.flush()
    return result.exit_code
