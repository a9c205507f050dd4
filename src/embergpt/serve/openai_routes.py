"""The /v1 routes: an OpenAI-compatible API (completions, chat completions, models), answered by the same
decode core as /api. `stream: true` answers with server-sent events ending in `data: [DONE]`."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from embergpt.inference.batch import Request as GenerationSpec
from embergpt.serve.api_errors import ApiError
from embergpt.serve.handoff import Finish, Generation, Result
from embergpt.serve.respond import ERRORS, respond, stop_strings
from embergpt.serve.schemas import ChatCompletionRequest, CompletionRequest, usage
from embergpt.serve.service import ModelService
from embergpt.serve.sse import DONE, sse_event

OPENAI_COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's /v1/completions


def _check_n(n: int) -> None:
    if n != 1:
        raise ApiError(400, "unsupported_parameter", "only n=1 is supported", parameter="n", requested=n)


def _openai_params(service: ModelService, req: CompletionRequest | ChatCompletionRequest) -> Any:
    return service.sampling_params(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)


def add_openai_routes(app: FastAPI, service: ModelService) -> None:
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

        return await respond(
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
            frozenset({service.tokenizer.bos_id}), stop_strings(req.stop),
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
        rendered = service.render_chat(messages)
        ids = rendered.ids
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if requested is None:
            requested = service.default_max_tokens(len(ids))
        max_tokens = service.check_max_tokens(requested)
        service.check_context(len(ids), max_tokens)
        spec = GenerationSpec(
            ids, max_tokens, _openai_params(service, req), req.seed, rendered.stop_ids,
            rendered.stop_strings + stop_strings(req.stop), tools=service.has_tools,
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
