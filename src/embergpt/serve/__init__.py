"""Serving a checkpoint over HTTP: JSON and OpenAI-compatible APIs, a web UI, continuous batching.

    from embergpt.serve import create_app, ServeSettings
    app = create_app(model, tokenizer, ServeSettings(rate_limit_rps=0))   # any ASGI server can run it

The command line is `embergpt serve --checkpoint DIR` (see docs/serve.md).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "embergpt.serve.app",
    "create_app_from_checkpoint": "embergpt.serve.app",
    "serve": "embergpt.serve.server",
    "ServeSettings": "embergpt.serve.settings",
    "resolve_settings": "embergpt.serve.settings",
    "Scheduler": "embergpt.inference.scheduler",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'embergpt.serve' has no attribute {name!r}")
