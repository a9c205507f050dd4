"""The FastAPI application: the web UI, the /api endpoints and the OpenAI-compatible /v1 endpoints.

    GET  /                      the web UI (static files, no build step, nothing from a CDN)
    POST /api/generate          {prompt, max_tokens, temperature, top_k?, top_p?, seed?, return_attention?, stream?}
    POST /api/generate/stream   the same as server-sent events: start, token..., done (the UI uses this)
    GET  /api/info              model and tokenizer description, limits
    GET  /api/health            status, uptime, model shape, checkpoint and tokenizer sha256, scheduler counters
    GET  /api/metrics           the checkpoint's training loss curve
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions   (OpenAI-compatible, `stream: true` = SSE)

Build one with `create_app(model, tokenizer, settings)` or `create_app_from_checkpoint(...)`; run it with
`embergpt.serve.server.serve` (or any ASGI server).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from embergpt.serve.api_docs import install_docs
from embergpt.serve.api_errors import SafeJSONResponse, install_error_handlers
from embergpt.serve.api_routes import add_api_routes
from embergpt.serve.body_limit import BodyLimitMiddleware
from embergpt.serve.openai_routes import add_openai_routes
from embergpt.serve.service import ModelService
from embergpt.serve.settings import ServeSettings


def static_dir() -> Path:
    return Path(str(resources.files("embergpt.serve") / "static"))


def create_app(
    model: torch.nn.Module,
    tokenizer: Any,
    settings: ServeSettings | None = None,
    checkpoint_dir: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    add_bos: bool = True,
) -> FastAPI:
    """The app serving `model` with `tokenizer`. Starts the scheduler's worker thread; stops it on shutdown."""
    service = ModelService(model, tokenizer, settings, checkpoint_dir, metadata, add_bos)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="embergpt",
        version=_version(),
        description="Text generation with a small GPT: a web UI, a JSON API and an OpenAI-compatible API.",
        lifespan=lifespan,
        default_response_class=SafeJSONResponse,
        docs_url=None,  # FastAPI's /docs and /redoc load their scripts from a CDN: install_docs serves them locally
        redoc_url=None,
    )
    app.state.service = service
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=service.settings.max_body_bytes)
    _add_ui_routes(app)
    add_api_routes(app, service)
    add_openai_routes(app, service)
    return app


def create_app_from_checkpoint(
    checkpoint: str | Path | None = None,
    load_latest: str | Path | None = None,
    settings: ServeSettings | None = None,
    device: str | None = None,
) -> FastAPI:
    """create_app for a checkpoint directory, or the latest checkpoint of a training output directory. The compute
    dtype and compile mode are the settings' (see ModelService)."""
    from embergpt.inference.loading import load_for_inference

    loaded = load_for_inference(checkpoint, device, None, load_latest)
    return create_app(loaded.model, loaded.tokenizer, settings, checkpoint_dir=loaded.path, metadata=loaded.metadata)


def _version() -> str:
    from embergpt import __version__

    return __version__


# ---- the web UI


def _add_ui_routes(app: FastAPI) -> None:
    root = static_dir()

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(root / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=root), name="static")
