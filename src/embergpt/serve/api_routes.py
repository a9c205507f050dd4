"""The /api routes: embergpt's own JSON API, which the web UI uses.

    POST /api/generate          {prompt, max_tokens, temperature, top_k?, top_p?, min_p?, repetition_penalty?,
                                 stop?, seed?, top_logprobs?, return_attention?, stream?}
    POST /api/generate/stream   the same as server-sent events: start, token..., done
    POST /api/chat              {messages: [{role, content}], ...the same sampling fields}: one assistant reply,
                                 rendered with the model's chat template, ending at <|assistant_end|>; the
                                 calculator tool runs when the tokenizer has the tool tokens. An assistant's
                                 content may be a list of parts, so that earlier tool calls are read back as the
                                 special tokens the model wrote: [{"type": "python", "text": "12+3"},
                                 {"type": "python_output", "text": "15"}, {"type": "text", "text": "It is 15."}]
    POST /api/chat/stream       the same as server-sent events
    GET  /api/info | /api/health | /api/metrics

Every token (a `token` event, or an entry of `tokens`) is {id, text, delta, logprob, top_logprobs?, forced}:
`logprob` is the token's log-probability under the model, `top_logprobs` the most likely alternatives when
asked for, `forced` marks a token the server inserted (a tool's output) rather than sampled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from embergpt.errors import TokenizerError
from embergpt.inference.batch import Request as GenerationRequest
from embergpt.serve.api_errors import ApiError, SafeJSONResponse
from embergpt.serve.handoff import Finish, Generation, PromptPiece, Result, TokenPiece
from embergpt.serve.respond import ERRORS, attention_of, respond, stop_strings, token_list
from embergpt.serve.schemas import ApiChatRequest, GenerateRequest, GenerateResponse, usage
from embergpt.serve.service import ModelService
from embergpt.serve.sse import sse_event


def add_api_routes(app: FastAPI, service: ModelService) -> None:
    @app.post("/api/generate", response_model=GenerateResponse, responses=ERRORS,
              summary="Generate a continuation of a prompt")
    async def generate(req: GenerateRequest, request: Request) -> Response:
        return await _run(service, _generate_request(service, req), req.stream, request)

    @app.post("/api/generate/stream", responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
              summary="Generate, streamed as server-sent events")
    async def generate_stream(req: GenerateRequest, request: Request) -> Response:
        return await _run(service, _generate_request(service, req), True, request)

    @app.post("/api/chat", response_model=GenerateResponse, responses=ERRORS,
              summary="The assistant's next reply in a conversation")
    async def chat(req: ApiChatRequest, request: Request) -> Response:
        return await _run(service, _chat_request(service, req), req.stream, request)

    @app.post("/api/chat/stream", responses={200: {"content": {"text/event-stream": {}}}, **ERRORS},
              summary="The assistant's next reply, streamed as server-sent events")
    async def chat_stream(req: ApiChatRequest, request: Request) -> Response:
        return await _run(service, _chat_request(service, req), True, request)

    @app.get("/api/info", summary="Model, tokenizer and limits")
    async def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/health", summary="Liveness, readiness (false while compiling), uptime and what is loaded")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/api/metrics", summary="The training loss curve of the loaded checkpoint", responses=ERRORS)
    async def metrics(request: Request) -> Response:
        service.charge(request)  # it reads a file: rate-limited like generation
        # Rendered directly (C json), not through FastAPI's per-value encoder: 2000 points, cheap to send often.
        return SafeJSONResponse(await asyncio.to_thread(service.metrics))


def _sampling_request(service: ModelService, req: GenerateRequest | ApiChatRequest, ids: list[int],
                      stop_ids: frozenset[int], stops: tuple[str, ...]) -> GenerationRequest:
    max_tokens = service.check_max_tokens(req.max_tokens)
    service.check_context(len(ids), max_tokens, req.return_attention)
    params = service.sampling_params(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)
    return GenerationRequest(
        prompt_ids=ids, max_new_tokens=max_tokens, sampling=params, seed=req.seed, stop_ids=stop_ids,
        stop_strings=stops + stop_strings(req.stop), logprobs=req.top_logprobs,
        return_attention=req.return_attention, tools=service.has_tools,
    )


def _generate_request(service: ModelService, req: GenerateRequest) -> GenerationRequest:
    ids = service.encode(req.prompt)
    return _sampling_request(service, req, ids, frozenset({service.tokenizer.bos_id}), ())


def _chat_request(service: ModelService, req: ApiChatRequest) -> GenerationRequest:
    # parts become plain dicts, the shape the chat template (and the JSONL conversations) use
    rendered = service.render_chat([(m.role, m.model_dump()["content"]) for m in req.messages])
    return _sampling_request(service, req, rendered.ids, rendered.stop_ids, rendered.stop_strings)


def _token_json(service: ModelService, piece: TokenPiece) -> dict[str, Any]:
    out: dict[str, Any] = {"id": piece.id, "text": piece.text, "logprob": piece.logprob, "forced": piece.forced}
    if piece.top_logprobs:
        out["top_logprobs"] = [{"id": i, "text": service.token_text(i), "logprob": lp} for i, lp in piece.top_logprobs]
    return out


async def _run(service: ModelService, spec: GenerationRequest, stream: bool, request: Request) -> Response:
    async def body(result: Result) -> dict[str, Any]:
        finish = result.finish
        return {
            "generated": result.text,
            "tokens": [_token_json(service, t) for t in result.tokens[0]],
            "prompt_tokens": token_list(service, spec.prompt_ids),
            "attention": await attention_of(finish),
            "finish_reason": finish.finish_reason,
            "usage": usage(finish.prompt_tokens, finish.completion_tokens),
        }

    return await respond(service, spec, request, stream, lambda gen: _stream(service, gen), body)


async def _stream(service: ModelService, gen: Generation) -> AsyncIterator[str]:
    yield sse_event({"type": "start", "prompt_tokens": token_list(service, gen.request.prompt_ids)})
    try:
        async for batch in gen.pieces():
            out = []
            for piece in batch:
                if isinstance(piece, TokenPiece):
                    out.append(sse_event({"type": "token", **_token_json(service, piece), "delta": piece.delta}))
                elif isinstance(piece, Finish):
                    out.append(sse_event({
                        "type": "done",
                        "delta": piece.delta,
                        "generated": gen.texts[0],
                        "finish_reason": piece.finish_reason,
                        "usage": usage(piece.prompt_tokens, piece.completion_tokens),
                        "attention": await attention_of(piece),
                    }))
                elif isinstance(piece, PromptPiece):
                    continue
            yield "".join(out)
    except ApiError as e:
        yield sse_event({"type": "error", **e.body()})
    except TokenizerError as e:  # pragma: no cover - a tokenizer that cannot decode its own ids
        yield sse_event({"type": "error", "error": "generation_failed", "message": str(e)})
