"""`embergpt micro`: train the pure-Python micro GPT on one-document-per-line text, then sample from it."""

from __future__ import annotations

import argparse
import sys
import time

EXAMPLE = """examples:
  embergpt micro                                     (1000 steps on the bundled names, then 20 new names)
  embergpt micro --steps 300 --n-embd 32 --data my_words.txt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=1000, help="training steps, one document each (default 1000)")
    parser.add_argument("--n-layer", type=int, default=1, help="transformer layers (default 1)")
    parser.add_argument("--n-embd", type=int, default=16, help="embedding width (default 16)")
    parser.add_argument("--n-head", type=int, default=4, help="attention heads; must divide --n-embd (default 4)")
    parser.add_argument("--block-size", type=int, default=16, help="longest context in tokens (default 16)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate, decays to 0 (default 0.01)")
    parser.add_argument("--temperature", type=float, default=0.5, help="sampling temperature (default 0.5)")
    parser.add_argument("--samples", type=int, default=20, help="names to sample after training (default 20)")
    parser.add_argument("--seed", type=int, default=42, help="seeds the shuffle, weights and samples (default 42)")
    parser.add_argument(
        "--data",
        default="builtin:names",
        help="text source with one document per line: builtin:names (default), a file, https://, hf://",
    )


def run(args: argparse.Namespace) -> int:
    from embergpt.data import load_text
    from embergpt.micro import MicroRun, MicroSettings, docs_from_text, train_and_sample
    from embergpt.micro.train import check_micro_numbers

    # Validate the flags before reading any data, so a typo fails at once. The numbers are checked here so that
    # the message names the flag; MicroSettings checks the shape (and caps the model's size) itself.
    check_micro_numbers(args.steps, args.samples, args.lr, args.temperature, flags=True)
    settings = MicroSettings(
        steps=args.steps,
        n_layer=args.n_layer,
        n_embd=args.n_embd,
        n_head=args.n_head,
        block_size=args.block_size,
        lr=args.lr,
        temperature=args.temperature,
        samples=args.samples,
        seed=args.seed,
    )
    docs = docs_from_text(load_text(args.data))

    # On a terminal one line is rewritten in place; in a log, a line every `every` steps.
    tty = sys.stdout.isatty()
    every = max(1, min(100, settings.steps // 10))
    started = time.perf_counter()

    def on_start(run: MicroRun) -> None:
        nonlocal started
        print(f"num docs: {run.num_docs}")
        print(f"vocab size: {run.tokenizer.vocab_size}")
        print(f"num params: {run.num_params}")
        started = time.perf_counter()

    def on_step(run: MicroRun) -> None:
        step = len(run.losses)
        if tty or step % every == 0 or step == settings.steps:
            window = min(step, 100)
            line = (
                f"step {step:{len(str(settings.steps))}d} / {settings.steps} | loss {run.losses[-1]:.4f}"
                f" | mean of last {window} {run.mean_loss(window):.4f}"
            )
            print(f"\r{line}", end="", flush=True) if tty else print(line, flush=True)

    result = train_and_sample(docs, settings, on_start=on_start, on_step=on_step)
    if tty:
        print()
    seconds = time.perf_counter() - started
    print(f"trained {settings.steps} steps in {seconds:.1f} s ({settings.steps / seconds:.1f} steps/s)")
    if result.samples:
        print(f"--- {len(result.samples)} samples at temperature {settings.temperature} ---")
        for i, name in enumerate(result.samples, 1):
            print(f"sample {i:2d}: {name}")
    return 0
