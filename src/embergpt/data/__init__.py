"""Text in, token batches out.

    load_text(source) -> str                      builtin:, a file, https://, hf:// (see `embergpt.data.sources`)
    TokenDataset.build(text, tokenizer, ...)      tokenised once, cached, split into train/val
    WindowSampler / DocumentSampler               seeded, resumable, DDP-aware (x, y) batches

Names are imported lazily so that `load_text` does not pull in torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_text": "embergpt.data.sources",
    "cache_dir": "embergpt.data.sources",
    "parse_hf_source": "embergpt.data.sources",
    "HFSource": "embergpt.data.sources",
    "RetryPolicy": "embergpt.data.sources",
    "TokenDataset": "embergpt.data.batches",
    "WindowSampler": "embergpt.data.batches",
    "DocumentSampler": "embergpt.data.batches",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embergpt.data' has no attribute {name!r}")
