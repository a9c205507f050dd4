"""The hand-off between one HTTP request (asyncio) and its generation on the scheduler's worker thread.

The worker hands a request's events to `Generation._sink`, which schedules them onto the event loop (one wake-up
per step for all requests of that loop, see LoopMailbox); `pieces()` yields them as TokenPiece / Finish. Text
deltas, stop strings, tools and logprobs are all the decode core's (embergpt.inference.batch): nothing here looks
at a token. Leaving `pieces()` early, for any reason (client gone, error), cancels the request.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch
from starlette.requests import Request as HttpRequest

from embergpt.inference.batch import Event, Request
from embergpt.inference.scheduler import Scheduler, SchedulerClosed, SchedulerFull
from embergpt.serve.api_errors import ApiError


@dataclass
class TokenPiece:
    id: int
    text: str  # this token's own text (U+FFFD for a partial UTF-8 character; the name of a special token)
    delta: str  # output text this token completes (may be "" while a character or a stop string is pending)
    index: int = 0  # which of the request's n samples
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    forced: bool = False


@dataclass
class Finish:
    finish_reason: str
    delta: str  # text released at the end
    prompt_tokens: int
    completion_tokens: int
    attention: list[torch.Tensor] | None = None
    index: int = 0
    stop_token: TokenPiece | None = None  # the stop token that ended the sample (not part of the text)


@dataclass
class Result:
    """A whole generation: per sample its text, tokens and finish; the prompt's logprobs when asked."""

    texts: list[str]
    tokens: list[list[TokenPiece]]
    finishes: list[Finish | None]
    prompt_logprobs: list[tuple[float | None, list[tuple[int, float]]]] | None = None

    @property
    def text(self) -> str:
        return self.texts[0]

    @property
    def finish(self) -> Finish | None:
        return self.finishes[0]


@dataclass
class PromptPiece:
    prompt_logprobs: list[tuple[float | None, list[tuple[int, float]]]] = field(default_factory=list)


class ClientDisconnected(Exception):
    pass


class LoopMailbox:
    """Hands events from the worker thread to an event loop with one wake-up per batch, not one per request.

    Each decode step reports to every active request; `call_soon_threadsafe` for each would wake the loop (a pipe
    write) once per request and step. Here the first post of a step schedules a drain, later ones only append.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, list[Event]]] = []
        self._lock = threading.Lock()
        self._scheduled = False

    def post(self, target: asyncio.Queue, events: list[Event]) -> None:  # any thread
        with self._lock:
            self._items.append((target, events))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:  # the loop's thread
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for target, events in items:
            target.put_nowait(events)


class Generation:
    """gen = Generation(scheduler, tokenizer, request, mailbox).start(); async for batch in gen.pieces(): ...

    `pieces()` yields lists of PromptPiece / TokenPiece / Finish (all that arrived since the last yield) until
    every sample has finished. A failed generation raises ApiError(500, "generation_failed").
    """

    def __init__(self, scheduler: Scheduler, tokenizer: Any, request: Request, mailbox: LoopMailbox) -> None:
        self.scheduler, self.tokenizer, self.request = scheduler, tokenizer, request
        self._mailbox = mailbox
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        request.sink = self._sink
        request.text = True
        self.texts = [""] * request.n
        self.finished = False

    def _sink(self, events: list[Event]) -> None:  # worker thread
        self._mailbox.post(self._queue, events)

    def start(self) -> Generation:
        try:
            self.scheduler.submit(self.request)
        except SchedulerFull as e:
            raise ApiError(503, "server_busy", f"{e}; retry shortly", headers={"Retry-After": "1"}) from None
        except SchedulerClosed as e:
            raise ApiError(503, "shutting_down", str(e)) from None
        return self

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode_bytes([token_id]).decode("utf-8", errors="replace")

    async def pieces(self) -> AsyncIterator[list[PromptPiece | TokenPiece | Finish]]:
        open_samples = self.request.n
        try:
            while open_samples:
                events = await self._queue.get()
                while not self._queue.empty():
                    events.extend(self._queue.get_nowait())
                batch: list[PromptPiece | TokenPiece | Finish] = []
                for ev in events:
                    if ev.kind == "token":
                        self.texts[ev.index] += ev.text
                        batch.append(TokenPiece(ev.token, self.token_text(ev.token), ev.text, ev.index,
                                                ev.logprob, ev.top_logprobs, ev.forced))
                    elif ev.kind == "prompt":
                        batch.append(PromptPiece(ev.prompt_logprobs or []))
                    elif ev.kind == "done":
                        self.texts[ev.index] += ev.text
                        reason = "stop" if ev.finish_reason == "cancelled" else ev.finish_reason
                        stop = None if ev.token is None else TokenPiece(
                            ev.token, self.token_text(ev.token), "", ev.index, ev.logprob, ev.top_logprobs)
                        batch.append(Finish(reason, ev.text, ev.prompt_tokens, ev.completion_tokens, ev.attention,
                                            ev.index, stop))
                        open_samples -= 1
                    else:
                        raise ApiError(500, "generation_failed", f"generation failed: {ev.error}")
                yield batch
            self.finished = True
        finally:
            if not self.finished:
                self.request.cancel()

    async def collect(self, request: HttpRequest | None = None) -> Result:
        """Run to the end; with `request`, a client disconnect cancels the generation (raises ClientDisconnected)."""

        async def consume() -> Result:
            n = self.request.n
            result = Result(texts=[""] * n, tokens=[[] for _ in range(n)], finishes=[None] * n)
            async for batch in self.pieces():
                for piece in batch:
                    if isinstance(piece, TokenPiece):
                        result.tokens[piece.index].append(piece)
                    elif isinstance(piece, PromptPiece):
                        result.prompt_logprobs = piece.prompt_logprobs
                    else:
                        result.finishes[piece.index] = piece
            result.texts = list(self.texts)
            return result

        if request is None:
            return await consume()
        task = asyncio.ensure_future(consume())
        watcher = asyncio.ensure_future(wait_for_disconnect(request))
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            watcher.cancel()
            return task.result()
        task.cancel()
        self.request.cancel()
        raise ClientDisconnected()


async def wait_for_disconnect(request: HttpRequest) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def attention_json(attention: list[torch.Tensor], decimals: int = 4) -> list[dict[str, Any]]:
    """Per layer [H, T, T] -> [{layer, head, weights}], weights row i holding positions 0..i (the causal part)."""
    out = []
    for layer, att in enumerate(attention):
        rows = torch.round(att.double(), decimals=decimals).tolist()  # float64: 0.1234 prints as 0.1234
        for head, mat in enumerate(rows):
            out.append({"layer": layer, "head": head, "weights": [row[: i + 1] for i, row in enumerate(mat)]})
    return out
