"""`embergpt tokenizer train|encode|decode`: train a char/BPE tokenizer, or inspect one."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_action", metavar="ACTION", required=True)

    train = sub.add_parser(
        "train",
        help="train a tokenizer on a text source and save it as one JSON file",
        description="Train on all but the last 10% of SOURCE; print the vocab size, the time taken and the "
        "compression (bytes per token) on that held-out tail.",
    )
    train.add_argument(
        "--input", required=True, metavar="SOURCE", help="builtin:shakespeare, builtin:names, a file, https://, hf://"
    )
    train.add_argument("--output", required=True, metavar="PATH", help="where to write the tokenizer JSON")
    train.add_argument("--kind", choices=("bpe", "char"), default="bpe", help="tokenizer kind (default: bpe)")
    train.add_argument(
        "--vocab-size", type=int, default=None, metavar="N", help="BPE ids incl. 9 special tokens (default 4096)"
    )
    train.add_argument(
        "--heldout", type=float, default=0.1, metavar="FRACTION", help="tail kept out of training (default 0.1)"
    )

    encode = sub.add_parser("encode", help="print the ids and pieces of a text")
    encode.add_argument("--tokenizer", required=True, metavar="PATH")
    encode.add_argument("--text", required=True)
    encode.add_argument("--allow-special", action="store_true", help="turn <|bos|> etc. in the text into specials")

    decode = sub.add_parser("decode", help="print the text of comma-separated ids")
    decode.add_argument("--tokenizer", required=True, metavar="PATH")
    decode.add_argument("--ids", required=True, help="e.g. 1,2,3")


def _parse_ids(raw: str) -> list[int]:
    parts = [p for p in raw.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--ids must be integers separated by commas, got {raw!r}") from None


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
            args.input, kind=args.kind, vocab_size=args.vocab_size, output=args.output, heldout_fraction=args.heldout
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
