"""`embergpt bench tokenizer`: BPE training time and encoding throughput, with same-run baselines.

- training: `BPETokenizer.train` (text cut at safe boundaries so rustbpe can count pieces in parallel) against
  rustbpe fed the text as one string;
- encoding: tiktoken on the whole text in one thread, and in parallel over safe pieces (what `TokenDataset`
  does), against rustbpe's own `encode` of the same merges. `encode_mb_per_s` is the faster of the two tiktoken
  modes (on a busy 2-core machine the parallel one can lose), named by `encode_mode`; both are reported.

Compression is reported twice: `bytes_per_token` on the text the timed tokenizer was trained on (all of it), and
`heldout_bytes_per_token` for a tokenizer trained on the first 90% and measured on the last 10%, which it never
saw (what `embergpt tokenizer train` prints).

Medians over `--repeats` runs; MB are 10^6 bytes of UTF-8. Goals on a 2-core machine: training <= 3 s and
encoding >= 10 MB/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

EXAMPLE = """example (about 30 s on a 2-core CPU):
  embergpt bench tokenizer --json --repeats 3"""
TRAIN_GOAL_SECONDS = 3.0
ENCODE_GOAL_MB_PER_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", default="builtin:shakespeare", metavar="SOURCE",
                        help="text to train/encode on (default builtin:shakespeare)")
    parser.add_argument("--vocab-size", type=int, default=4096, metavar="N", help="BPE vocabulary (default 4096)")
    parser.add_argument("--repeats", type=int, default=7, metavar="N",
                        help="runs per measurement, median reported (default 7)")


def _median_seconds(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def run(args: argparse.Namespace) -> dict[str, Any]:
    import rustbpe
    import tiktoken

    from embergpt.data import load_text
    from embergpt.tokenizer import BPETokenizer, bytes_per_token, heldout_split
    from embergpt.tokenizer.base import CHAT_SPECIAL_TOKENS
    from embergpt.tokenizer.bpe import GPT4_SPLIT_PATTERN, MAX_VOCAB_SIZE, MIN_VOCAB_SIZE, cut_at_safe_boundaries

    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if not MIN_VOCAB_SIZE <= args.vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"--vocab-size must be between {MIN_VOCAB_SIZE} and {MAX_VOCAB_SIZE}, got {args.vocab_size}")
    text = load_text(args.input)
    head, tail = heldout_split(text, 0.1)
    n_bytes = len(text.encode("utf-8"))
    threads = os.cpu_count() or 1

    train_s, tok = _median_seconds(lambda: BPETokenizer.train(text, args.vocab_size), args.repeats)

    def train_whole() -> Any:
        ref = rustbpe.Tokenizer()
        ref.train_from_iterator(iter([text]), args.vocab_size - len(CHAT_SPECIAL_TOKENS), pattern=GPT4_SPLIT_PATTERN)
        return ref

    baseline_train_s, ref = _median_seconds(train_whole, args.repeats)

    enc = tok._enc  # the tiktoken.Encoding itself: measure the library, not our thin wrapper
    pieces = cut_at_safe_boundaries(text, max(1, len(text) // (4 * threads)))
    encoders: dict[str, Callable[[], Any]] = {
        "single": lambda: enc.encode_ordinary(text),
        "parallel": lambda: enc.encode_ordinary_batch(pieces, num_threads=threads),
        "rustbpe": lambda: ref.encode(text),
    }
    # Round-robin, so that a burst of load from elsewhere on a shared machine hits every contender alike.
    times: dict[str, list[float]] = {name: [] for name in encoders}
    outputs: dict[str, Any] = {}
    for _ in range(args.repeats):
        for name, fn in encoders.items():
            seconds, outputs[name] = _median_seconds(fn, 1)
            times[name].append(seconds)
    single_s, batch_s, rust_s = (statistics.median(times[name]) for name in encoders)
    whole_ids, batch_ids, rust_ids = outputs["single"], outputs["parallel"], outputs["rustbpe"]

    def mb_s(seconds: float) -> float:
        return round(n_bytes / seconds / 1e6, 2)

    best_mode, best_s = min((("single", single_s), ("parallel", batch_s)), key=lambda item: item[1])
    encode_mb_s = mb_s(best_s)
    return {
        "benchmark": "tokenizer",
        "input": args.input,
        "text_bytes": n_bytes,
        "vocab_size": tok.vocab_size,
        "repeats": args.repeats,
        "cpu_count": threads,
        "machine": platform.machine(),
        "tiktoken_version": tiktoken.__version__,
        "train_seconds": round(train_s, 3),
        "train_baseline_seconds": round(baseline_train_s, 3),
        "train_speedup_vs_one_piece": round(baseline_train_s / train_s, 2),
        "same_merges_as_baseline": [bytes(b) for b, _ in sorted(ref.get_mergeable_ranks(), key=lambda x: x[1])]
        == tok.ranks,
        "bytes_per_token": round(n_bytes / len(whole_ids), 3),  # on the training text itself
        "heldout_bytes_per_token": round(bytes_per_token(BPETokenizer.train(head, args.vocab_size), tail), 3),
        "encode_mb_per_s": encode_mb_s,
        "encode_mode": best_mode,
        "encode_single_thread_mb_per_s": mb_s(single_s),
        "encode_parallel_mb_per_s": mb_s(batch_s),
        "encode_rustbpe_baseline_mb_per_s": mb_s(rust_s),
        "encode_speedup_vs_rustbpe": round(rust_s / best_s, 2),
        "encode_pieces": len(pieces),
        "ids_agree": [i for p in batch_ids for i in p] == whole_ids == rust_ids,
        "goal_met": {
            f"train_le_{TRAIN_GOAL_SECONDS:g}s": train_s <= TRAIN_GOAL_SECONDS,
            f"encode_ge_{ENCODE_GOAL_MB_PER_S:g}_mb_per_s": encode_mb_s >= ENCODE_GOAL_MB_PER_S,
        },
    }
