"""Loss and bits per byte of a model on a text: every token predicted exactly once."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from embergpt.eval.progress import ProgressFn
from embergpt.train.evaluate import token_byte_lengths


@torch.no_grad()
def text_loss(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    batch_size: int = 16,
    max_tokens: int | None = None,
    val_fraction: float | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, float | int | None]:
    """Mean cross-entropy (nats / token) and bits per byte of `text`, tokenized without BOS and cut into
    consecutive windows of the model's sequence_len (each window's first token has only its own window as context),
    `batch_size` windows per forward. `val_fraction` keeps the last fraction of the tokens (training's validation
    part, in window mode); `max_tokens` then keeps the first that many predicted tokens.

    Bits per byte = total nats over text tokens / ln 2 / their UTF-8 bytes (special tokens count in neither).
    Returns {"loss", "bpb", "tokens", "bytes"}.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    ids = [i for chunk in tokenizer.encode_batch(tokenizer.encoding_chunks(text, 1 << 16)) for i in chunk]
    if val_fraction is not None:
        if not 0.0 < val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in (0, 1], got {val_fraction}")
        ids = ids[len(ids) - int(len(ids) * val_fraction) :]
    if max_tokens is not None:
        ids = ids[: max_tokens + 1]
    if len(ids) < 2:
        raise ValueError("the text is too short to evaluate: it needs at least two tokens")
    device = next(model.parameters()).device
    seq_len = model.config.sequence_len
    all_ids = torch.tensor(ids, dtype=torch.long)
    starts = list(range(0, len(ids) - 1, seq_len))
    nbytes_of = token_byte_lengths(tokenizer).to(device)
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # loss sum, tokens, loss over text tokens, bytes
    for b in range(0, len(starts), batch_size):
        rows = starts[b : b + batch_size]
        x = torch.zeros(len(rows), seq_len, dtype=torch.long)
        y = torch.full((len(rows), seq_len), -1, dtype=torch.long)  # -1: padding, ignored
        for r, s in enumerate(rows):
            n = min(seq_len, len(ids) - 1 - s)
            x[r, :n], y[r, :n] = all_ids[s : s + n], all_ids[s + 1 : s + n + 1]
        x, y = x.to(device), y.to(device)
        width = int((y >= 0).sum(1).max())  # the last batch may be shorter
        logits = model(x[:, :width])
        y = y[:, :width].flatten()
        losses = F.cross_entropy(logits.float().flatten(0, 1), y, ignore_index=-1, reduction="none")
        valid = y >= 0
        nbytes = nbytes_of[y.clamp(min=0)] * valid
        totals += torch.stack([losses.sum(), valid.sum(), (losses * (nbytes > 0)).sum(), nbytes.sum()]).double()
        if progress is not None:
            progress(min(len(starts), b + batch_size), len(starts))
    loss_sum, count, byte_loss_sum, total_bytes = totals.tolist()
    return {
        "loss": loss_sum / count,
        "bpb": byte_loss_sum / math.log(2) / total_bytes if total_bytes > 0 else None,
        "tokens": int(count),
        "bytes": int(total_bytes),
    }
