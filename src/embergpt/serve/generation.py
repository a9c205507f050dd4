"""The bridge between one HTTP request (asyncio) and one scheduler job (worker thread).

The worker hands events to `Generation._sink`, which schedules them onto the event loop with
`loop.call_soon_threadsafe`; `pieces()` turns them into text deltas (stop strings honoured). Leaving `pieces()`
early, for any reason (client gone, stop string, error), cancels the job.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch
from starlette.requests import Request

from embergpt.sampling import SamplingParams
from embergpt.serve.api_errors import ApiError
from embergpt.serve.output_text import OutputText
from embergpt.serve.scheduler import Event, Job, Scheduler, SchedulerClosed, SchedulerFull


@dataclass(frozen=True)
class GenerationSpec:
    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    stop_strings: tuple[str, ...] = ()
    return_attention: bool = False


@dataclass
class TokenPiece:
    id: int
    text: str  # this token's own text (U+FFFD for a partial UTF-8 character)
    delta: str  # output text this token completes (may be "" while a character or a stop string is pending)


@dataclass
class Finish:
    finish_reason: str
    delta: str  # text released at the end
    prompt_tokens: int
    completion_tokens: int
    attention: list[torch.Tensor] | None = None


@dataclass
class Result:
    text: str
    tokens: list[TokenPiece] = field(default_factory=list)
    finish: Finish | None = None


class ClientDisconnected(Exception):
    pass


class LoopMailbox:
    """Hands events from the worker thread to an event loop with one wake-up per batch, not one per job.

    Each decode step reports to every active job; `call_soon_threadsafe` for each would wake the loop (a pipe
    write) once per job and step. Here the first post of a step schedules a drain, later ones only append.
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
    """gen = Generation(scheduler, tokenizer, spec); gen.start(); async for batch in gen.pieces(): ...

    `pieces()` yields lists of TokenPiece (all that arrived since the last yield) and finally a list ending in
    a Finish. A failed job raises ApiError(500, "generation_failed").
    """

    def __init__(
        self, scheduler: Scheduler, tokenizer: Any, spec: GenerationSpec, mailbox: LoopMailbox | None = None
    ) -> None:
        self.scheduler, self.tokenizer, self.spec = scheduler, tokenizer, spec
        self._mailbox = mailbox or LoopMailbox(asyncio.get_running_loop())
        self._queue: asyncio.Queue[list[Event]] = asyncio.Queue()
        self.output = OutputText(tokenizer, spec.stop_strings)
        self.job = Job(
            prompt_ids=spec.prompt_ids,
            max_tokens=spec.max_tokens,
            params=spec.params,
            sink=self._sink,
            seed=spec.seed,
            stop_ids=spec.stop_ids,
            return_attention=spec.return_attention,
        )
        self.n_tokens = 0

    def _sink(self, events: list[Event]) -> None:  # worker thread
        self._mailbox.post(self._queue, events)

    def start(self) -> Generation:
        try:
            self.scheduler.submit(self.job)
        except SchedulerFull as e:
            raise ApiError(503, "server_busy", f"{e}; retry shortly", headers={"Retry-After": "1"}) from None
        except SchedulerClosed as e:
            raise ApiError(503, "shutting_down", str(e)) from None
        return self

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode_bytes([token_id]).decode("utf-8", errors="replace")

    async def pieces(self) -> AsyncIterator[list[TokenPiece | Finish]]:
        try:
            while True:
                events = await self._queue.get()
                while not self._queue.empty():
                    events.extend(self._queue.get_nowait())
                batch: list[TokenPiece | Finish] = []
                for ev in events:
                    if ev.kind == "token":
                        self.n_tokens += 1
                        batch.append(TokenPiece(ev.token, self._token_text(ev.token), self.output.push(ev.token)))
                        if self.output.stopped:  # a stop string: end here, the worker drops the row
                            self.job.cancel()
                            batch.append(Finish("stop", "", len(self.spec.prompt_ids), self.n_tokens))
                            yield batch
                            return
                    elif ev.kind == "done":
                        reason = "stop" if ev.finish_reason == "cancelled" else ev.finish_reason
                        delta = self.output.finish()
                        batch.append(Finish(reason, delta, ev.prompt_tokens, ev.completion_tokens, ev.attention))
                        yield batch
                        return
                    else:
                        raise ApiError(500, "generation_failed", f"generation failed: {ev.error}")
                yield batch
        finally:
            if not self.job.finished:
                self.job.cancel()

    async def collect(self, request: Request | None = None) -> Result:
        """Run to the end; with `request`, a client disconnect cancels the job (raises ClientDisconnected)."""

        async def consume() -> Result:
            result = Result(text="")
            async for batch in self.pieces():
                for piece in batch:
                    if isinstance(piece, TokenPiece):
                        result.tokens.append(piece)
                    else:
                        result.finish = piece
            result.text = self.output.text
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
        self.job.cancel()
        raise ClientDisconnected()


async def wait_for_disconnect(request: Request) -> None:
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
