"""embergpt: a complete small-GPT toolkit on PyTorch.

The pipeline, one stage per module:

    data -> tokenizer -> model -> train (+ checkpoint) -> inference -> serve (+ web UI)
    micro: the whole algorithm once more, in pure Python, for reading

Top-level names are imported lazily, so that `embergpt.micro` (pure Python) never pulls in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "GPT": "embergpt.model",
    "GPTConfig": "embergpt.config",
    "PRESETS": "embergpt.config",
    "save_checkpoint": "embergpt.checkpoint",
    "load_checkpoint": "embergpt.checkpoint",
    "CheckpointError": "embergpt.errors",
    "EmbergptError": "embergpt.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embergpt' has no attribute {name!r}")
