"""Evaluating a model: loss and bits per byte on text, multiple-choice tasks scored by log-likelihood.

    text_loss(model, tokenizer, text)            mean loss (nats/token) and bits per byte, every token once
    score_choices(model, tokenizer, items)       CORE-style accuracy: the choice with the lowest mean loss wins
    TASKS, register_task                         name -> task function (`embergpt eval --tasks NAME`)
    evaluate_checkpoint(path, ...)               what `embergpt eval` runs

Names are imported lazily so that the task registry (and `embergpt --help`) does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "text_loss": "embergpt.eval.text_metrics",
    "ChoiceItem": "embergpt.eval.multiple_choice",
    "read_choice_items": "embergpt.eval.multiple_choice",
    "score_choices": "embergpt.eval.multiple_choice",
    "TASKS": "embergpt.eval.tasks",
    "TaskContext": "embergpt.eval.tasks",
    "register_task": "embergpt.eval.tasks",
    "evaluate_checkpoint": "embergpt.eval.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embergpt.eval' has no attribute {name!r}")
