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

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles

from embergpt.errors import TokenizerError
from embergpt.serve.api_docs import install_docs
from embergpt.serve.api_errors import ApiError, SafeJSONResponse, install_error_handlers
from embergpt.serve.body_limit import BodyLimitMiddleware
from embergpt.serve.chat_template import render_chat
from embergpt.serve.generation import (
    ClientDisconnected,
    Finish,
    Generation,
    GenerationSpec,
    Result,
    TokenPiece,
    attention_json,
)
from embergpt.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponseModel,
    GenerateRequest,
    GenerateResponse,
    usage,
)
from embergpt.serve.service import ModelService
from embergpt.serve.settings import ServeSettings
from embergpt.serve.sse import DONE, EventStreamResponse, sse_event

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256
OPENAI_COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's /v1/completions

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponseModel, "description": text}
    for code, text in {
        400: "a limit or check failed (prompt_too_large, max_tokens_out_of_range, unencodable_prompt, ...)",
        413: "body_too_large",
        422: "invalid_request: the body does not match the schema",
        429: "rate_limited (see the Retry-After header)",
        503: "server_busy: too many requests waiting",
    }.items()
}


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
    _add_api_routes(app, service)
    _add_openai_routes(app, service)
    return app


def create_app_from_checkpoint(
    checkpoint: str | Path | None = None,
    load_latest: str | Path | None = None,
    settings: ServeSettings | None = None,
    device: str | None = None,
    dtype: str | None = None,
) -> FastAPI:
    """create_app for a checkpoint directory, or the latest checkpoint of a training output directory."""
    from embergpt.serve.loading import load_for_serving

    ckpt, path = load_for_serving(checkpoint, load_latest, device, dtype)
    return create_app(ckpt.model, ckpt.tokenizer, settings, checkpoint_dir=path, metadata=ckpt.metadata)


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


# ---- /api


def _api_spec(service: ModelService, req: GenerateRequest) -> GenerationSpec:
    ids = service.encode(req.prompt)
    max_tokens = service.check_max_tokens(req.max_tokens)
    service.check_context(len(ids), max_tokens, req.return_attention)
    params = service.sampling_params(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)
    return GenerationSpec(
        prompt_ids=ids,
        max_tokens=max_tokens,
        params=params,
        seed=req.seed,
        stop_ids=frozenset({service.tokenizer.bos_id}),
        return_attention=req.return_attention,
    )


def _token_list(service: ModelService, ids: list[int]) -> list[dict[str, Any]]:
    tok = service.tokenizer
    return [{"id": i, "text": tok.decode_bytes([i]).decode("utf-8", errors="replace")} for i in ids]


async def _attention(finish: Finish) -> list[dict[str, Any]]:
    if not finish.attention:
        return []
    return await asyncio.to_thread(attention_json, finish.attention)


async def _respond(
    service: ModelService,
    spec: GenerationSpec,
    request: Request,
    stream: bool,
    events: Callable[[Generation], AsyncIterator[str]],
    body: Callable[[Result], Awaitable[dict[str, Any]]],
) -> Response:
    """What every generating endpoint does once its request is validated: charge the rate limit, start the
    generation, and answer with server-sent `events` or, once it is done, one JSON `body` (499 if the client left)."""
    service.charge(request)
    gen = service.generation(spec)
    if stream:
        return EventStreamResponse(events(gen))
    try:
        result = await gen.collect(request)
    except ClientDisconnected:
        return SafeJSONResponse({"error": "client_disconnected"}, status_code=499)
    return SafeJSONResponse(await body(result))


def _add_api_routes(app: FastAPI, service: ModelService) -> None:
    async def run_generate(req: GenerateRequest, request: Request) -> Response:
        spec = _api_spec(service, req)

        async def body(result: Result) -> dict[str, Any]:
            finish = result.finish
            return {
                "generated": result.text,
                "tokens": [{"id": t.id, "text": t.text} for t in result.tokens],
                "prompt_tokens": _token_list(service, spec.prompt_ids),
                "attention": await _attention(finish),
                "finish_reason": finish.finish_reason,
                "usage": usage(finish.prompt_tokens, finish.completion_tokens),
            }

        return await _respond(service, spec, request, req.stream, lambda gen: _api_stream(service, gen), body)

    @app.post(
        "/api/generate",
        response_model=GenerateResponse,
        responses=ERRORS,
        summary="Generate a continuation of a prompt",
    )
    async def generate(req: GenerateRequest, request: Request) -> Response:
        return await run_generate(req, request)

    @app.post(
        "/api/generate/stream",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
        summary="Generate, streamed as server-sent events",
    )
    async def generate_stream(req: GenerateRequest, request: Request) -> Response:
        return await run_generate(req.model_copy(update={"stream": True}), request)

    @app.get("/api/info", summary="Model, tokenizer and limits")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/health", summary="Liveness, uptime and what is loaded")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/api/metrics", summary="The training loss curve of the loaded checkpoint", responses=ERRORS)
    async def metrics(request: Request) -> Response:
        service.charge(request)  # it reads a file: rate-limited like generation
        # Rendered directly (C json), not through FastAPI's per-value encoder: 2000 points, cheap to send often.
        return SafeJSONResponse(await asyncio.to_thread(service.metrics))


async def _api_stream(service: ModelService, gen: Generation) -> AsyncIterator[str]:
    yield sse_event({"type": "start", "prompt_tokens": _token_list(service, gen.spec.prompt_ids)})
    try:
        async for batch in gen.pieces():
            out = []
            for piece in batch:
                if isinstance(piece, TokenPiece):
                    out.append(sse_event({"type": "token", "id": piece.id, "text": piece.text, "delta": piece.delta}))
                else:
                    out.append(
                        sse_event(
                            {
                                "type": "done",
                                "delta": piece.delta,
                                "generated": gen.output.text,
                                "finish_reason": piece.finish_reason,
                                "usage": usage(piece.prompt_tokens, piece.completion_tokens),
                                "attention": await _attention(piece),
                            }
                        )
                    )
            yield "".join(out)
    except ApiError as e:
        yield sse_event({"type": "error", **e.body()})


# ---- /v1 (OpenAI-compatible)


def _stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, "too_many_stop_strings", f"at most {MAX_STOP_STRINGS} stop strings", max_allowed=4)
    longest = max((len(s) for s in stops), default=0)
    if longest > MAX_STOP_LENGTH:  # matching cost grows with the square of the length: bound it
        raise ApiError(
            400,
            "stop_string_too_long",
            f"stop strings may be at most {MAX_STOP_LENGTH} characters, got {longest}",
            max_length=MAX_STOP_LENGTH,
            actual_length=longest,
        )
    return tuple(s for s in stops if s)


def _check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, "unsupported_parameter", "only n=1 is supported", parameter="n", requested=n)


def _openai_params(service: ModelService, req: CompletionRequest | ChatCompletionRequest) -> Any:
    return service.sampling_params(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)


def _add_openai_routes(app: FastAPI, service: ModelService) -> None:
    def model_card() -> dict[str, Any]:
        return {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "embergpt"}

    @app.get("/v1/models", summary="The served model (OpenAI-compatible)")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", summary="One model (OpenAI-compatible)", responses=ERRORS)
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != service.model_id:
            raise ApiError(404, "model_not_found", f"no model {model_id!r}; this server has {service.model_id!r}")
        return model_card()

    async def run_openai(
        spec: GenerationSpec,
        req: Any,
        request: Request,
        id_prefix: str,
        object_name: str,
        stream: Callable[[ModelService, Generation, str, int, bool], AsyncIterator[str]],
        choice: Callable[[str, str], dict[str, Any]],
    ) -> Response:
        """What both OpenAI endpoints share: an id, and the completion object or its stream of chunks."""
        rid, created = f"{id_prefix}-{uuid.uuid4().hex[:24]}", int(time.time())
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def body(result: Result) -> dict[str, Any]:
            f = result.finish
            return {
                "id": rid,
                "object": object_name,
                "created": created,
                "model": service.model_id,
                "choices": [choice(result.text, f.finish_reason)],
                "usage": usage(f.prompt_tokens, f.completion_tokens),
            }

        return await _respond(
            service, spec, request, req.stream, lambda gen: stream(service, gen, rid, created, include_usage), body
        )

    @app.post(
        "/v1/completions",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
        summary="Text completion (OpenAI-compatible)",
    )
    async def completions(req: CompletionRequest, request: Request) -> Response:
        _check_n(req.n)
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise ApiError(400, "unsupported_parameter", "prompt must be a string or a list of one string")
            prompt = prompt[0]
        ids = service.encode(prompt)
        requested = req.max_tokens if req.max_tokens is not None else OPENAI_COMPLETION_DEFAULT_MAX_TOKENS
        max_tokens = service.check_max_tokens(requested)
        service.check_context(len(ids), max_tokens)
        spec = GenerationSpec(
            ids, max_tokens, _openai_params(service, req), req.seed,
            frozenset({service.tokenizer.bos_id}), _stop_strings(req.stop),
        )  # fmt: skip
        return await run_openai(
            spec, req, request, "cmpl", "text_completion", _completion_stream,
            lambda text, finish: {"text": text, "index": 0, "logprobs": None, "finish_reason": finish},
        )  # fmt: skip

    @app.post(
        "/v1/chat/completions",
        responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
        summary="Chat completion (OpenAI-compatible)",
    )
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        _check_n(req.n)
        messages = [("system" if m.role == "developer" else m.role, m.text()) for m in req.messages]
        service.check_text_size("".join(content for _, content in messages))
        try:
            rendered = render_chat(messages, service.tokenizer, add_bos=service.add_bos)
        except TokenizerError as e:
            raise ApiError(400, "unencodable_prompt", f"a message cannot be encoded by this tokenizer: {e}") from None
        except ValueError as e:
            raise ApiError(400, "invalid_messages", str(e)) from None
        ids = rendered.ids
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if requested is None:
            requested = service.default_max_tokens(len(ids))
        max_tokens = service.check_max_tokens(requested)
        service.check_context(len(ids), max_tokens)
        spec = GenerationSpec(
            ids, max_tokens, _openai_params(service, req), req.seed, rendered.stop_ids,
            rendered.stop_strings + _stop_strings(req.stop),
        )  # fmt: skip
        return await run_openai(
            spec, req, request, "chatcmpl", "chat.completion", _chat_stream,
            lambda text, finish: {
                "index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                "finish_reason": finish,
            },
        )  # fmt: skip


async def _completion_stream(
    service: ModelService, gen: Generation, rid: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(text: str, finish_reason: str | None) -> str:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish_reason}
        return sse_event(
            {"id": rid, "object": "text_completion", "created": created, "model": service.model_id, "choices": [choice]}
        )

    try:
        async for batch in gen.pieces():
            text = "".join(p.delta for p in batch)
            finish = batch[-1] if batch and isinstance(batch[-1], Finish) else None
            out = chunk(text, None) if text else ""
            if finish is not None:
                out += chunk("", finish.finish_reason)
                if include_usage:
                    out += sse_event(
                        {
                            "id": rid,
                            "object": "text_completion",
                            "created": created,
                            "model": service.model_id,
                            "choices": [],
                            "usage": usage(finish.prompt_tokens, finish.completion_tokens),
                        }
                    )
            if out:
                yield out
    except ApiError as e:
        yield sse_event(e.body())
    yield DONE


async def _chat_stream(
    service: ModelService, gen: Generation, rid: str, created: int, include_usage: bool
) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish_reason: str | None, **extra: Any) -> str:
        body = {
            "id": rid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": service.model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            **extra,
        }
        return sse_event(body)

    yield chunk({"role": "assistant", "content": ""}, None)
    try:
        async for batch in gen.pieces():
            text = "".join(p.delta for p in batch)
            finish = batch[-1] if batch and isinstance(batch[-1], Finish) else None
            out = chunk({"content": text}, None) if text else ""
            if finish is not None:
                out += chunk({}, finish.finish_reason)
                if include_usage:
                    body = {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": service.model_id,
                        "choices": [],
                        "usage": usage(finish.prompt_tokens, finish.completion_tokens),
                    }
                    out += sse_event(body)
            if out:
                yield out
    except ApiError as e:
        yield sse_event(e.body())
    yield DONE
