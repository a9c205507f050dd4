"""Server-sent events: the wire format and a response that stops generating when the client goes away."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"


def sse_event(data: Any) -> str:
    """One `data:` event holding JSON (ASCII-escaped, so it is always one line)."""
    return f"data: {json.dumps(data, ensure_ascii=True, separators=(',', ':'))}\n\n"


class EventStreamResponse(StreamingResponse):
    """A text/event-stream response that watches for the client's disconnect while it streams.

    Starlette (for ASGI >= 2.4 servers) only notices a gone client when a write fails; a request still waiting for a
    batch slot writes nothing. Here a disconnect cancels the body iterator at once, whose `finally` cancels the job.
    """

    media_type = "text/event-stream"

    def __init__(self, content: Any, status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, headers=SSE_HEADERS, media_type=self.media_type)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async with anyio.create_task_group() as tg:

            async def stream() -> None:
                with contextlib.suppress(OSError):  # the client went away mid-write
                    await self.stream_response(send)
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()
