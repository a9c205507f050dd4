"""Held-out evaluation (loss and bits per byte) and the text samples printed while training.

Evaluation draws the same validation batches every time (a fixed seed), so successive val losses differ only
because the model changed, and it never touches the training RNG: a resumed run evaluates identically.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from embergpt.sampling import SamplingParams
from embergpt.train.distributed import DistContext

EVAL_SEED = 4242  # the validation batches' seed: the same batches for every evaluation of every run


def token_byte_lengths(tokenizer: Any) -> torch.Tensor:
    """[V] int64: the UTF-8 bytes each token stands for; 0 for special tokens (they are not text)."""
    special = set(tokenizer.special_tokens.values())
    return torch.tensor(
        [0 if i in special else len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)], dtype=torch.long
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Any,
    batch_size: int,
    seq_len: int,
    steps: int,
    token_bytes: torch.Tensor,
    dist: DistContext,
    autocast: contextlib.AbstractContextManager | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float | None]:
    """Mean validation loss (nats / token) and bits per byte over `steps` global batches; `progress(done, steps)`
    is called after each batch (an evaluation of a large model takes minutes).

    Bits per byte = total nats / ln 2 / total UTF-8 bytes of the predicted tokens, with special tokens left out
    of both sums: unlike the loss it does not depend on the tokenizer, so char and BPE models compare.
    """
    was_training = model.training
    model.eval()
    sampler = dataset.sampler("val", batch_size, seq_len, seed=EVAL_SEED, rank=dist.rank, world_size=dist.world_size)
    token_bytes = token_bytes.to(dist.device)
    # [loss sum, tokens, loss sum over byte-carrying tokens, bytes] in float64 so long evaluations do not drift
    totals = torch.zeros(4, dtype=torch.float64, device=dist.device)
    for done in range(steps):
        if progress is not None:
            progress(done, steps)
        x, y = sampler.next_batch(dist.device)
        with autocast or contextlib.nullcontext():
            logits = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-1, reduction="none")
        valid = y.flatten() >= 0
        nbytes = token_bytes[y.flatten().clamp(min=0)] * valid
        totals += torch.stack(
            [losses.sum(), valid.sum(), (losses * (nbytes > 0)).sum(), nbytes.sum()]
        ).double()
    if progress is not None:
        progress(steps, steps)
    dist.all_reduce(totals)
    model.train(was_training)
    loss_sum, count, byte_loss_sum, nbytes = totals.tolist()
    return {
        "val_loss": loss_sum / max(count, 1.0),
        "val_bpb": byte_loss_sum / math.log(2) / nbytes if nbytes > 0 else None,
    }


def sample_prompt(tokenizer: Any, documents: bool) -> list[int]:
    """Where samples start: <|bos|> for documents (each began with it in training), else a newline."""
    if not documents:
        with contextlib.suppress(Exception):
            ids = tokenizer.encode("\n")
            if ids:
                return ids
    return [tokenizer.bos_id]


@torch.no_grad()
def sample_texts(
    model: nn.Module,
    tokenizer: Any,
    prompt: list[int],
    num_samples: int,
    max_new_tokens: int,
    seed: int,
    stop_at_bos: bool = False,
    temperature: float = 0.8,
    top_k: int | None = 50,
) -> list[str]:
    """`num_samples` continuations of `prompt`, from the one decode core (Engine.generate: a KV cache, one
    shared prefill, the context shifted when the output outgrows the model's). Seeded, and independent of the
    global RNG; the model's train/eval mode is restored."""
    from embergpt.inference.engine import Engine

    was_training = model.training
    try:
        engine = Engine(model, tokenizer)
        stops = [tokenizer.bos_id] if stop_at_bos else []
        rows = engine.generate(prompt, max_new_tokens, SamplingParams(temperature=temperature, top_k=top_k), seed,
                               stops, num_samples, context_shift=True)
    finally:
        model.train(was_training)
    return [tokenizer.decode([t for t in row if t != tokenizer.bos_id]) for row in rows]


def show_eval_progress(done: int, total: int) -> None:
    """`evaluate`'s progress as one rewritten line on stderr, on a terminal only; erased when done."""
    if not sys.stderr.isatty():
        return
    line = f"evaluating: batch {done}/{total}" if done < total else ""
    print(f"\r{line:<40}\r" if not line else f"\r{line}", end="", file=sys.stderr, flush=True)
