"""`embergpt eval CKPT`: loss and bits per byte on a text source, accuracy on multiple-choice tasks."""

from __future__ import annotations

import argparse
import json

EXAMPLE = """examples:
  embergpt eval runs/shakespeare/final --tasks shakespeare-next-line
  embergpt eval runs/chat/final --tasks chat --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from embergpt.eval.tasks import TASK_HELP

    tasks = "; ".join(f"{name}: {text}" for name, text in sorted(TASK_HELP.items()))
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (from train or import)")
    parser.add_argument("--data", default=None, metavar="SOURCE",
                        help="text source to score, as for train (builtin:shakespeare, a file, https://, hf://); "
                             "default when no task is given: the data the checkpoint was trained on")
    parser.add_argument("--split", default="val", choices=["val", "all"],
                        help="val (default): the last val_fraction of the tokens, training's validation part; "
                             "all: every token")
    parser.add_argument("--tasks", default="", metavar="NAME[,NAME]",
                        help=f"built-in tasks to run ({tasks}; default: none)")
    parser.add_argument("--task-file", action="append", default=[], metavar="JSONL",
                        help='multiple-choice items, one JSON object a line: {"context": str, "choices": [str, ...], '
                             '"gold": int}; may be repeated (default: none)')
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward (default 16)")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="score at most this many tokens of --data (default: all)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps (default: $EMBERGPT_DEVICE or best)")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object (default: a table)")


def run(args: argparse.Namespace) -> int:
    from embergpt.eval.run import evaluate_checkpoint, format_report

    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks.strip() else []
    if "" in tasks:
        raise ValueError(f"--tasks must be task names separated by commas, got {args.tasks[:80]!r}")
    result = evaluate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, tasks=tasks, task_files=args.task_file,
        batch_size=args.batch_size, max_tokens=args.max_tokens, device=args.device, show_progress=True,
    )
    print(json.dumps(result) if args.json else "\n".join(format_report(result)))
    return 0
