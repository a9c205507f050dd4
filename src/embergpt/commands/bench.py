"""`embergpt bench NAME`: each benchmark lives in `embergpt/bench/NAME.py` and returns a JSON-able dict."""

from __future__ import annotations

import argparse
import json

from embergpt.cli import _import_optional

BENCHMARKS: dict[str, str] = {
    "tokenizer": "tokenizer training time and encoding throughput",
    "train": "training-step tok/s and MFU against the measured matmul peak",
    "decode": "KV-cache decode tok/s against HF transformers",
    "serve": "concurrent streaming clients against a local server",
    "chat": "multi-turn chat with the KV cache kept between turns against re-prefilling the history",
    "micro": "pure-Python micro GPT training speed",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench_name", metavar="NAME", required=True)
    for name, help_text in BENCHMARKS.items():
        module = _import_optional(f"embergpt.bench.{name}")
        if module is None:
            continue
        p = sub.add_parser(
            name, help=help_text, description=getattr(module, "DESCRIPTION", help_text),
            epilog=getattr(module, "EXAMPLE", None), formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--json", action="store_true", help="print only the JSON result (default: indented)")
        module.add_arguments(p)
        p.set_defaults(_bench=module)


def run(args: argparse.Namespace) -> int:
    result = args._bench.run(args)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
