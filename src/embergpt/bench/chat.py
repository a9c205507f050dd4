"""`embergpt bench chat`: a multi-turn conversation with the KV cache kept between turns, against re-prefilling
the whole history at every turn (what nanochat's chat_cli does), in the same run.

The model is the benchmark shape (PRESETS["bench"], random weights) with a char tokenizer carrying the chat
tokens; every turn sends one user message and generates a fixed number of tokens (greedy, no stop), so both
sides do the same decode work and differ only in prefill. Reported per side: the tokens run through prefill,
the median seconds per turn, and the time of the last turn (where the history is longest); `speedup` is the ratio
of total times.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

DESCRIPTION = __doc__
EXAMPLE = "example:\n  embergpt bench chat --json --turns 8 --reply-tokens 32   # about a minute on 2 CPU cores"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--turns", type=int, default=8, help="turns of the conversation (default 8)")
    parser.add_argument("--reply-tokens", type=int, default=32, help="tokens generated per reply (default 32)")
    parser.add_argument("--message-chars", type=int, default=120, help="characters per user message (default 120)")
    parser.add_argument("--device", default=None, help="cpu, cuda or mps (default: best available)")


def _conversation(session: Any, messages: list[str]) -> tuple[list[float], dict[str, int]]:
    seconds = []
    for m in messages:
        start = time.perf_counter()
        for _ in session.send(m):
            pass
        seconds.append(time.perf_counter() - start)
    return seconds, dict(session.counts)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from embergpt.bench import check_count
    from embergpt.chat.session import ChatSession
    from embergpt.config import PRESETS
    from embergpt.data import load_text
    from embergpt.device import resolve_device
    from embergpt.inference.engine import Engine
    from embergpt.model import GPT
    from embergpt.tokenizer import CharTokenizer

    for flag, value in (("--turns", args.turns), ("--reply-tokens", args.reply_tokens),
                        ("--message-chars", args.message_chars)):
        check_count(flag, value)
    text = load_text("builtin:shakespeare")
    tok = CharTokenizer.from_text(text, chat=True)
    config = PRESETS["bench"].replace(vocab_size=tok.vocab_size)
    per_turn = args.message_chars + args.reply_tokens + 4
    if per_turn * args.turns + 2 > config.sequence_len:
        raise ValueError(f"{args.turns} turns of ~{per_turn} tokens exceed the model's context of "
                         f"{config.sequence_len}; ask for fewer turns or shorter messages")
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = GPT(config).to(device).eval()
    messages = [text[i * 997 : i * 997 + args.message_chars] for i in range(args.turns)]
    sides: dict[str, Any] = {}
    for name, reuse in (("reuse_cache", True), ("re_prefill", False)):
        session = ChatSession(Engine(model, tok), max_new_tokens=args.reply_tokens, reuse_cache=reuse)
        session.stop_ids = frozenset()  # a random model ends replies at random: make both sides decode alike
        seconds, counts = _conversation(session, messages)
        sides[name] = {
            "prefill_tokens": counts["prefill_tokens"],
            "reused_tokens": counts["reused_tokens"],
            "median_turn_s": round(statistics.median(seconds), 4),
            "last_turn_s": round(seconds[-1], 4),
            "total_s": round(sum(seconds), 3),
        }
    return {
        "benchmark": "chat",
        "device": str(device),
        "model": {k: getattr(config, k) for k in ("n_layer", "n_embd", "sequence_len", "vocab_size")},
        "turns": args.turns,
        "reply_tokens": args.reply_tokens,
        **sides,
        "prefill_saving": round(1 - sides["reuse_cache"]["prefill_tokens"] / sides["re_prefill"]["prefill_tokens"],
                                3),
        "speedup": round(sides["re_prefill"]["total_s"] / sides["reuse_cache"]["total_s"], 2),
        "last_turn_speedup": round(sides["re_prefill"]["last_turn_s"] / sides["reuse_cache"]["last_turn_s"], 2),
    }

