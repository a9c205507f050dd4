"""Evaluation tasks by name: `embergpt eval --tasks NAME[,NAME]` runs TASKS[NAME](context).

A task is a function of a TaskContext returning a JSON-able dict (accuracy and friends). Add one with
`@register_task("name")`; it then appears in `embergpt eval --help` and in `--tasks`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from embergpt.eval.progress import ProgressFn, progress_printer


@dataclass
class TaskContext:
    model: Any  # a torch module with forward(idx) -> logits and a config with sequence_len
    tokenizer: Any
    batch_size: int = 16
    show_progress: bool = False

    def progress(self, label: str) -> ProgressFn | None:
        """A progress callback for a part of the evaluation, or None when progress is not shown."""
        return progress_printer(label) if self.show_progress else None


TaskFn = Callable[[TaskContext], dict[str, Any]]
TASKS: dict[str, TaskFn] = {}
TASK_HELP: dict[str, str] = {}


def register_task(name: str, help: str = "") -> Callable[[TaskFn], TaskFn]:
    """Decorator: make `fn` the task `name`."""

    def add(fn: TaskFn) -> TaskFn:
        TASKS[name] = fn
        TASK_HELP[name] = help or (fn.__doc__ or "").strip().split("\n")[0]
        return fn

    return add


def run_choice_task(ctx: TaskContext, name: str, items: list[Any]) -> dict[str, Any]:
    """Score multiple-choice `items` (ChoiceItem); the result without the per-item predictions."""
    from embergpt.eval.multiple_choice import score_choices

    result = score_choices(ctx.model, ctx.tokenizer, items, ctx.batch_size, ctx.progress(name))
    result.pop("predictions")
    return result


def _shuffle_words(line: str, rng: random.Random) -> str:
    words = line.split(" ")
    for _ in range(10):  # a different order, when the line has one
        rng.shuffle(words)
        if " ".join(words) != line:
            break
    return " ".join(words)


def _shuffle_letters(line: str, rng: random.Random) -> str:
    def scramble(word: str) -> str:
        letters = list(word)
        rng.shuffle(letters)
        return "".join(letters)

    return " ".join(scramble(word) for word in line.split(" "))


def next_line_items(n_items: int = 100, seed: int = 0) -> list[Any]:
    """"Which of these four lines really follows this one?" on the held-out tail of tiny Shakespeare (the last 10%,
    which `train --data builtin:shakespeare` validates on and never trains on). The context is a line; the
    choices are "\n" + the true next line, the same line with its words shuffled, another line of the tail with
    the letters of each word shuffled, and another line of the tail as it is, in a random order. Telling them
    apart takes, in turn, spelling, word order, and the sense of the previous line. Fixed by `seed`."""
    from embergpt.data.sources import load_text
    from embergpt.eval.multiple_choice import ChoiceItem
    from embergpt.tokenizer import heldout_split

    _, tail = heldout_split(load_text("builtin:shakespeare"), 0.1)
    lines = tail.split("\n")
    pool = sorted({line for line in lines if len(line.split(" ")) >= 3})
    pairs = [(a, b) for a, b in zip(lines, lines[1:]) if a.strip() and len(b.split(" ")) >= 3]
    rng = random.Random(seed)
    items = []
    for context, answer in rng.sample(pairs, min(n_items, len(pairs))):
        context = context.rstrip()  # no trailing space to move into the choices (see multiple_choice.encode_pair)
        other, scrambled = rng.sample([line for line in pool if line != answer], 2)
        choices = [_shuffle_words(answer, rng), _shuffle_letters(scrambled, rng), other]
        gold = rng.randrange(4)
        choices.insert(gold, answer)
        items.append(ChoiceItem(context, tuple("\n" + c for c in choices), gold))
    return items


@register_task("shakespeare-next-line",
               "which of 4 lines follows a line of tiny Shakespeare's held-out tail (100 items)")
def shakespeare_next_line(ctx: TaskContext) -> dict[str, Any]:
    return run_choice_task(ctx, "shakespeare-next-line", next_line_items())


@register_task("chat", "held-out accuracy per builtin:chat-tasks task (spell, reverse, count, arithmetic with the "
               "calculator, identity; 50 items each), replies generated greedily by the decode core")
def chat_tasks(ctx: TaskContext) -> dict[str, Any]:
    from embergpt.chat.evaluate import evaluate_model

    result = evaluate_model(ctx.model, ctx.tokenizer)
    return {**result["accuracy"], "items": result["items"]}
