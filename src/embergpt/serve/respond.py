"""What every generating endpoint shares once its request is validated: the error table of the OpenAPI schema,
stop-string checks, and `respond` (charge the rate limit, start the generation, answer with SSE or JSON)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from embergpt.inference.batch import Request as GenerationRequest
from embergpt.serve.api_errors import ApiError, SafeJSONResponse
from embergpt.serve.handoff import ClientDisconnected, Finish, Generation, Result, attention_json
from embergpt.serve.schemas import ErrorResponseModel
from embergpt.serve.service import ModelService
from embergpt.serve.sse import EventStreamResponse

MAX_STOP_STRINGS = 4
MAX_STOP_LENGTH = 256

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


def stop_strings(stop: str | list[str] | None) -> tuple[str, ...]:
    """A request's stop strings, bounded in number and length (matching cost grows with the square of the length)."""
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > MAX_STOP_STRINGS:
        raise ApiError(400, "too_many_stop_strings", f"at most {MAX_STOP_STRINGS} stop strings",
                       max_allowed=MAX_STOP_STRINGS)
    longest = max((len(s) for s in stops), default=0)
    if longest > MAX_STOP_LENGTH:
        raise ApiError(400, "stop_string_too_long",
                       f"stop strings may be at most {MAX_STOP_LENGTH} characters, got {longest}",
                       max_length=MAX_STOP_LENGTH, actual_length=longest)
    return tuple(s for s in stops if s)


def token_list(service: ModelService, ids: list[int]) -> list[dict[str, Any]]:
    tok = service.tokenizer
    return [{"id": i, "text": tok.decode_bytes([i]).decode("utf-8", errors="replace")} for i in ids]


async def attention_of(finish: Finish | None) -> list[dict[str, Any]]:
    if finish is None or not finish.attention:
        return []
    return await asyncio.to_thread(attention_json, finish.attention)


async def respond(
    service: ModelService,
    spec: GenerationRequest,
    request: Request,
    stream: bool,
    events: Callable[[Generation], AsyncIterator[str]],
    body: Callable[[Result], Awaitable[dict[str, Any]]],
) -> Response:
    """Charge the rate limit, start the generation, and answer with server-sent `events` or, once it is done, one
    JSON `body` (499 if the client left)."""
    service.charge(request)
    gen = service.generation(spec)
    if stream:
        return EventStreamResponse(events(gen))
    try:
        result = await gen.collect(request)
    except ClientDisconnected:
        return SafeJSONResponse({"error": "client_disconnected"}, status_code=499)
    return SafeJSONResponse(await body(result))
