"""`embergpt import SRC OUT --format hf`: a Hugging Face NanoChatForCausalLM directory as an embergpt checkpoint."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """example:
  embergpt import hf-demo runs/imported/final --format hf"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SRC", help="Hugging Face model directory on disk (config.json, "
                        "model.safetensors, tokenizer.json)")
    parser.add_argument("out", metavar="OUT", help="checkpoint directory to write (must not exist unless --overwrite)")
    parser.add_argument("--format", required=True, choices=["hf"], help="hf: a transformers NanoChatForCausalLM")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from embergpt.interop import import_hf

    out = import_hf(args.source, args.out, overwrite=args.overwrite, warn=lambda line: print(line, file=sys.stderr))
    print(f"imported {args.source} -> {out} (try: embergpt generate --checkpoint {out} --prompt ...)")
    return 0
