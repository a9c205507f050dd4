"""`embergpt export CKPT OUT --format hf`: a checkpoint as a Hugging Face transformers directory."""

from __future__ import annotations

import argparse

EXAMPLE = """example:
  embergpt export runs/shakespeare/final hf-demo --format hf"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CKPT", help="checkpoint directory (from train or import)")
    parser.add_argument("out", metavar="OUT", help="directory to write (must not exist unless --overwrite)")
    parser.add_argument("--format", required=True, choices=["hf"],
                        help="hf: NanoChatForCausalLM for transformers (AutoModelForCausalLM.from_pretrained(OUT))")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (default: refuse)")


def run(args: argparse.Namespace) -> int:
    from embergpt.interop import export_hf

    out = export_hf(args.checkpoint, args.out, overwrite=args.overwrite)
    print(f"exported {args.checkpoint} -> {out} (load it with transformers' AutoModelForCausalLM.from_pretrained)")
    return 0
