"""Multiple-choice tasks scored by log-likelihood, CORE-style: the choice the model finds least surprising wins.

A task is a JSONL file, one item per line: {"context": str, "choices": [str, ...], "gold": int}. Each choice is
scored as a continuation of the context: [BOS] + tokens(context + choice), of which the tokens past
tokens(context) are the choice's (whitespace ending the context moves to the choice first, as in lm-evaluation-
harness, so a word keeps its leading space). Reported:

- accuracy: the choice with the lowest mean loss per token wins (CORE's rule);
- accuracy_sum: the highest total log-likelihood wins (lm-evaluation-harness's `acc`);
- centered_accuracy: (accuracy - chance) / (1 - chance), chance = the mean of 1 / number of choices: 0 for random
  guessing, 1 for perfect.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from embergpt.errors import InputFileError
from embergpt.eval.progress import ProgressFn

MAX_FILE_BYTES = 64 << 20
MAX_ITEMS = 100_000
MAX_CHOICES = 100


@dataclass(frozen=True)
class ChoiceItem:
    context: str
    choices: tuple[str, ...]
    gold: int

    def __post_init__(self) -> None:
        if not isinstance(self.context, str):
            raise ValueError("context must be a string")
        if not 2 <= len(self.choices) <= MAX_CHOICES or not all(isinstance(c, str) and c for c in self.choices):
            raise ValueError(f"choices must be 2 to {MAX_CHOICES} non-empty strings")
        if not isinstance(self.gold, int) or isinstance(self.gold, bool) or not 0 <= self.gold < len(self.choices):
            raise ValueError(f"gold must be an index into choices (0..{len(self.choices) - 1}), got {self.gold!r}")


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    """The items of a JSONL task file; InputFileError naming the file and line for anything malformed."""
    from embergpt import bounded_json
    from embergpt.input_files import read_regular_text

    text = read_regular_text(path, max_bytes=MAX_FILE_BYTES, what="task file")
    items = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if len(items) == MAX_ITEMS:
            raise InputFileError(f"task file {str(path)!r} has over {MAX_ITEMS:,} items; split it")
        try:
            doc = bounded_json.loads(line, what="item", max_depth=4, error=InputFileError)
            if not isinstance(doc, dict) or set(doc) - {"context", "choices", "gold"} or len(doc) != 3:
                raise ValueError('expected an object with exactly "context", "choices" and "gold"')
            if not isinstance(doc["choices"], list):
                raise ValueError("choices must be a list")
            items.append(ChoiceItem(doc["context"], tuple(doc["choices"]), doc["gold"]))
        except (ValueError, RecursionError) as e:
            raise InputFileError(f"task file {str(path)!r} line {n}: {str(e)[:200]}") from None
    if not items:
        raise InputFileError(f"task file {str(path)!r} has no items")
    return items


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], int]:
    """([BOS] + tokens of context + continuation, how many of the last tokens are the continuation's)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    bos = [tokenizer.bos_id]
    whole = bos + tokenizer.encode(context + continuation)
    n_context = len(bos) + len(tokenizer.encode(context))
    return whole, len(whole) - n_context


@torch.no_grad()
def continuation_losses(
    model: torch.nn.Module,
    sequences: list[tuple[list[int], int]],
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> list[tuple[float, int]]:
    """(summed loss in nats, token count) of the last n tokens of each (ids, n), batched by length. A sequence
    longer than the model's context keeps its last sequence_len + 1 tokens (the continuation must fit)."""
    seq_len = model.config.sequence_len
    device = next(model.parameters()).device
    rows = []
    for ids, n in sequences:
        if n < 1:
            raise ValueError("a choice encodes to no tokens of its own; give non-empty choices")
        if n > seq_len:
            raise ValueError(f"a choice of {n} tokens does not fit the model's context of {seq_len}")
        rows.append((ids[-(seq_len + 1):], n))
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths share a batch
    out: list[tuple[float, int]] = [(0.0, 0)] * len(rows)
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        width = len(rows[batch[0]][0]) - 1
        x = torch.zeros(len(batch), width, dtype=torch.long)
        y = torch.full((len(batch), width), -1, dtype=torch.long)
        for r, i in enumerate(batch):
            ids, n = rows[i]
            x[r, : len(ids) - 1] = torch.tensor(ids[:-1])
            y[r, len(ids) - 1 - n : len(ids) - 1] = torch.tensor(ids[-n:])  # only the continuation is scored
        logits = model(x.to(device))
        losses = F.cross_entropy(logits.float().transpose(1, 2), y.to(device), ignore_index=-1, reduction="none")
        sums = losses.double().sum(1).tolist()
        for r, i in enumerate(batch):
            out[i] = (sums[r], rows[i][1])
        if progress is not None:
            progress(min(len(order), b + batch_size), len(order))
    return out


def score_choices(
    model: torch.nn.Module,
    tokenizer: Any,
    items: list[ChoiceItem],
    batch_size: int = 16,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Accuracy (lowest mean loss), accuracy_sum (highest log-likelihood) and centered accuracy over `items`;
    also `predictions`, the winning choice per item."""
    sequences, spans = [], []
    for item in items:
        start = len(sequences)
        sequences += [encode_pair(tokenizer, item.context, choice) for choice in item.choices]
        spans.append((start, len(sequences)))
    losses = continuation_losses(model, sequences, batch_size, progress)
    correct = correct_sum = 0
    predictions = []
    for item, (a, b) in zip(items, spans):
        mean = [loss / n for loss, n in losses[a:b]]
        total = [loss for loss, _ in losses[a:b]]
        pick = min(range(len(mean)), key=mean.__getitem__)
        predictions.append(pick)
        correct += pick == item.gold
        correct_sum += min(range(len(total)), key=total.__getitem__) == item.gold
    accuracy = correct / len(items)
    chance = sum(1 / len(item.choices) for item in items) / len(items)
    return {
        "items": len(items),
        "accuracy": accuracy,
        "accuracy_sum": correct_sum / len(items),
        "centered_accuracy": (accuracy - chance) / (1 - chance),
        "chance": chance,
        "predictions": predictions,
    }
