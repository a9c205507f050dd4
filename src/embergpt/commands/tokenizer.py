"""`embergpt tokenizer train|encode|decode`: train a char/BPE tokenizer, or inspect one."""

from __future__ import annotations

import argparse
import sys

EXAMPLE = """examples:
  embergpt tokenizer train --input builtin:shakespeare --output tok.json    (BPE, 4096 ids: about 10 s on a laptop)
  embergpt tokenizer encode --tokenizer tok.json --text "To be, or not to be"
  embergpt tokenizer decode --tokenizer tok.json --ids 1,2,3"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_action", metavar="ACTION", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    train = sub.add_parser(
        "train",
        help="train a tokenizer on a text source and save it as one JSON file",
        description="Train on all but the last --heldout fraction of SOURCE; print the vocab size, the time taken "
        "and the compression (bytes per token) on that held-out tail, which training never saw.",
        epilog="example (BPE on Shakespeare, about 10 s on a laptop CPU; large inputs show progress):\n"
        "  embergpt tokenizer train --input builtin:shakespeare --output tok.json --vocab-size 4096",
        formatter_class=raw,
    )
    train.add_argument(
        "--input", required=True, metavar="SOURCE",
        help="builtin:shakespeare, builtin:names, a file, https://, hf:// (required: no default)",
    )
    train.add_argument(
        "--output", required=True, metavar="PATH",
        help="the tokenizer JSON to write: a new file, or a regular file to replace (required: no default)",
    )
    train.add_argument("--kind", choices=("bpe", "char"), default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument(
        "--vocab-size", type=int, default=None, metavar="N", help="BPE ids incl. 9 special tokens (default 4096)"
    )
    train.add_argument(
        "--heldout", type=float, default=0.1, metavar="FRACTION", help="tail kept out of training (default 0.1)"
    )

    encode = sub.add_parser(
        "encode", help="print the ids and pieces of a text",
        description="Encode TEXT with a tokenizer file: print its ids, the piece of text each id stands for, and "
        "the bytes per token.",
        epilog='example:\n  embergpt tokenizer encode --tokenizer runs/shakespeare/final/tokenizer.json --text "Hello"',
        formatter_class=raw,
    )
    encode.add_argument("--tokenizer", required=True, metavar="PATH", help="a tokenizer .json file (required)")
    encode.add_argument("--text", required=True, help="the text to encode (required)")
    encode.add_argument(
        "--allow-special", action="store_true",
        help="turn <|bos|> etc. in the text into special tokens (default: off, they stay plain text)",
    )

    decode = sub.add_parser(
        "decode", help="print the text of comma-separated ids",
        description="Decode token ids with a tokenizer file and print the text they stand for.",
        epilog="example:\n  embergpt tokenizer decode --tokenizer runs/shakespeare/final/tokenizer.json --ids 20,43,50",
        formatter_class=raw,
    )
    decode.add_argument("--tokenizer", required=True, metavar="PATH", help="a tokenizer .json file (required)")
    decode.add_argument("--ids", required=True, help="ids separated by commas, e.g. 1,2,3 (required)")


def _parse_ids(raw: str) -> list[int]:
    try:
        return [int(p) for p in raw.split(",")]  # int() allows the spaces around each; an empty entry is an error
    except ValueError:
        raise ValueError(f"--ids must be integers separated by commas (e.g. 1,2,3), got {raw[:80]!r}") from None


def _piece(raw: bytes) -> str:
    """A token as text when it is whole UTF-8, else as bytes (part of a multi-byte character)."""
    try:
        return repr(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(raw)


def run(args: argparse.Namespace) -> int:
    from embergpt.tokenizer import load_tokenizer, train_tokenizer

    if args.tokenizer_action == "train":
        if args.kind == "char" and args.vocab_size is not None:
            raise ValueError("--vocab-size applies to --kind bpe; a char tokenizer has one id per character")
        report = train_tokenizer(
            args.input, kind=args.kind, vocab_size=args.vocab_size, output=args.output, heldout_fraction=args.heldout,
            progress=lambda message: print(message, file=sys.stderr, flush=True),
        )
        print("\n".join(report.lines()))
        return 0

    tok = load_tokenizer(args.tokenizer)
    if args.tokenizer_action == "encode":
        ids = tok.encode(args.text, allow_special=args.allow_special)
        pieces = [_piece(tok.token_bytes(i)) for i in ids]
        n_bytes = len(args.text.encode("utf-8"))
        print("ids:", ",".join(map(str, ids)))
        print("pieces:", " ".join(pieces))
        print(f"{len(ids)} tokens for {n_bytes} bytes ({n_bytes / max(1, len(ids)):.2f} bytes/token)")
    else:
        sys.stdout.write(tok.decode(_parse_ids(args.ids)) + "\n")
    return 0
