"""Continuous batching: one worker thread drives one `Batch` for many concurrent requests.

    scheduler = Scheduler(engine, max_batch=16)     # or Scheduler(model, ...): an eager Engine is made for it
    scheduler.warm_up()                             # compile every decode graph the batch will use, before traffic
    tokens = scheduler.generate(prompt_ids, 50, SamplingParams(0.8), seed=1)   # blocking, for notebooks/tests
    scheduler.submit(Request(..., sink=callback))   # what the server does: events arrive on the worker thread

The worker loop: admit waiting requests into free slots (their prompts prefilled together), then one decode step
of every active row, then hand each request its events. A request joins the running batch at the next step
boundary instead of waiting for it to drain. All the generation logic (sampling, stops, tools, logprobs) is the
Batch's; this module only owns the queue, the thread and the counters.

Results leave through each request's `sink` (called on the worker thread with the request's events of one step;
it must not block). The server's sink hands them to its event loop with `loop.call_soon_threadsafe`, so the event
loop never runs model code and never waits for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import sys
import threading
import time
from typing import Any

import torch

from embergpt.inference.batch import Event, Request, validate_request
from embergpt.inference.engine import Engine
from embergpt.sampling import SamplingParams


class SchedulerFull(Exception):
    """The waiting queue is full; the caller should retry later."""


class SchedulerClosed(Exception):
    """The scheduler was shut down."""


class Scheduler:
    """Runs requests on a worker thread with continuous batching. `submit(request)`; `close()` when done.

    engine: an Engine (its dtype and compile mode are the server's), or a model (run eagerly). max_batch: rows
    decoded together (the cache's slots). max_queue: requests allowed to wait for a slot (submit raises
    SchedulerFull beyond it). vocab_limit: ids >= this are never sampled. fixed_slots: see Batch.
    """

    def __init__(
        self,
        engine: Engine | torch.nn.Module,
        max_batch: int = 16,
        max_queue: int = 256,
        vocab_limit: int | None = None,
        autostart: bool = True,
        fixed_slots: bool = False,
        warm_up: bool = False,
    ) -> None:
        self._warm = warm_up
        self.engine = engine if isinstance(engine, Engine) else Engine(engine)
        self.model, self.config = self.engine.model, self.engine.config
        self.max_batch = max_batch
        self.batch = self.engine.batch(max_batch, fixed_slots=fixed_slots, vocab_limit=vocab_limit)
        self.cache = self.batch.cache
        self.cached = self.engine.supports_kv_cache
        self._queue: queue.Queue[Request | None] = queue.Queue(maxsize=max_queue)
        self._waiting: list[Request] = []  # taken from the queue, not yet admitted (waits for free slots)
        self._closed = False
        self._counts = dict(submitted=0, completed=0, cancelled=0, errors=0)
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.warmup_seconds: float | None = None
        self.ready_at: float | None = None  # time.monotonic() when the first request could be taken
        self._thread = threading.Thread(target=self._run, name="embergpt-scheduler", daemon=True)
        if autostart:
            self._thread.start()

    def start(self) -> None:
        """Start the worker (only needed with autostart=False, e.g. to queue several requests first)."""
        if not self._thread.is_alive():
            self._thread.start()

    # ---- public, any thread

    def submit(self, request: Request) -> Request:
        """Queue `request`; raises SchedulerFull when the queue is full, SchedulerClosed after close() and
        ValueError for a request the core cannot run."""
        if self._closed:
            raise SchedulerClosed("the scheduler is shut down")
        validate_request(request, self.max_batch, self.engine.tokenizer)
        request.submitted_at = time.monotonic()
        try:
            self._queue.put_nowait(request)
        except queue.Full:
            raise SchedulerFull(f"{self._queue.maxsize} requests are already waiting") from None
        with self._lock:
            self._counts["submitted"] += 1
        return request

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current step; requests still queued or running end with an error event."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        c, b = self._counts, self.batch.counts
        return {
            "active": self.batch.active,
            "queued": self._queue.qsize() + len(self._waiting),
            "max_batch": self.max_batch,
            "submitted": c["submitted"],
            "completed": c["completed"],
            "cancelled": c["cancelled"],
            "errors": c["errors"],
            "tokens_generated": b["tokens"],
            "decode_steps": b["steps"],
            "decode_rows": b["rows"],
            "prefill_forwards": b["prefills"],
            "mean_batch": round(b["rows"] / b["steps"], 2) if b["steps"] else 0.0,
        }

    def generate_async(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        seed: int | None = None,
        stop_ids: frozenset[int] = frozenset(),
    ) -> concurrent.futures.Future[list[int]]:
        """Queue one generation; the future resolves to its generated ids (a stop token excluded)."""
        future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()
        tokens: list[int] = []

        def sink(events: list[Event]) -> None:
            for e in events:
                if future.done():
                    return
                if e.kind == "token":
                    tokens.append(e.token)
                elif e.kind == "error":
                    future.set_exception(RuntimeError(e.error))
                elif e.kind == "done":
                    future.set_result(tokens)

        request = Request(list(prompt_ids), max_tokens, params or SamplingParams(), seed, stop_ids, sink=sink)
        future.add_done_callback(lambda f: request.cancel() if f.cancelled() else None)
        self.submit(request)
        return future

    def generate(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        seed: int | None = None,
        stop_ids: frozenset[int] = frozenset(),
        timeout: float | None = None,
    ) -> list[int]:
        """Blocking convenience (notebooks, tests): the generated ids of one request (without a stop token)."""
        future = self.generate_async(prompt_ids, max_tokens, params, seed, stop_ids)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("generation did not finish in time") from None

    # ---- warm-up

    def warm_up(self, windows: int | None = None) -> float:
        """Compile (and run once) every decode graph the batch will use, before traffic; returns the seconds taken.

        A compiled step has one graph per (batch bucket, window) (CUDA graphs), one per batch bucket (max-autotune
        on CPU) or two dynamic ones (default on CPU); each is met here with dummy tokens in free slots. `windows`
        caps how many window sizes are warmed (default: all). Eager engines need nothing. Sets `ready`.
        """
        start = time.monotonic()
        engine = self.engine
        if engine.compile and self.cache is not None and self.batch.active == 0:
            from embergpt.inference.kv_cache import SlotView

            buckets = [self.max_batch] if self.batch.fixed_slots else sorted(
                {min(self.max_batch, 1 << k) for k in range(self.max_batch.bit_length() + 1)})
            sizes = sorted({engine.window(w, self.cache.max_len) for w in range(1, self.cache.max_len + 1)})
            if engine.device.type == "cpu" and len(sizes) > 3:
                # the window is dynamic on CPU: "default" has two graphs for every batch and window (one for a
                # lone row, one for more), "max-autotune" one per row bucket (the cache's spare position keeps
                # the last window from being a graph of its own); the smallest, next and largest windows check
                # that, and the others reuse the graphs at no cost
                sizes = [sizes[0], sizes[1], sizes[-1]]
            sizes = sizes[:windows] if windows else sizes
            print(f"embergpt: compiling the decode step ({engine.compile_mode}, {len(buckets)} row buckets x "
                  f"{len(sizes)} windows; minutes on a small CPU, seconds with a warm cache)...", file=sys.stderr,
                  flush=True)
            with torch.inference_mode():
                for b in buckets:
                    tokens = torch.zeros(b, dtype=torch.long, device=engine.device)
                    for w in sizes:
                        engine.decode_step(tokens, SlotView(self.cache, 0, b, w))
                        self.cache.pos.zero_()
        self.warmup_seconds = round(time.monotonic() - start, 3)
        if engine.compile and self.cache is not None:
            print(f"embergpt: decode step compiled in {self.warmup_seconds:.1f} s; ready", file=sys.stderr, flush=True)
        self._mark_ready()
        return self.warmup_seconds

    def _mark_ready(self) -> None:
        self.ready_at = time.monotonic()
        self.ready.set()

    # ---- worker thread

    def _run(self) -> None:
        if self._warm:
            try:
                self.warm_up()
            except Exception as e:  # a failed compile must not take the server down: serve eagerly
                print(f"embergpt: warm-up failed ({type(e).__name__}: {e}); decoding eagerly", flush=True)
                self.engine.decode_eagerly()
                self._mark_ready()
        else:
            self._mark_ready()
        with torch.inference_mode():
            while True:
                if not self._admit():
                    break
                if self.batch.active:
                    try:
                        events = self.batch.step()
                    except Exception as e:  # a bug must not kill the worker: fail the batch, keep serving
                        events = self.batch.fail_all(f"{type(e).__name__}: {e}")
                    self._dispatch(events)
        self._dispatch(self.batch.fail_all("the server is shutting down"))
        pending = list(self._waiting)
        while True:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                pending.append(request)
        for request in pending:
            self._dispatch([Event("error", request, error="the server is shutting down")])

    def _admit(self) -> bool:
        """Move waiting requests into free slots (blocking while idle); False once close() was called."""
        stop = False
        while True:
            block = not self.batch.active and not self._waiting
            try:
                request = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
            except queue.Empty:
                if block and not self._closed:
                    continue
                break
            if request is None:
                stop = True
                break
            if request.cancelled:
                self._dispatch([Event("done", request, finish_reason="cancelled",
                                      prompt_tokens=len(request.prompt_ids))])
                continue
            self._waiting.append(request)
            if sum(r.n for r in self._waiting) >= self.batch.free:
                break
        admitted: list[Request] = []
        free = self.batch.free
        while self._waiting and self._waiting[0].n <= free:
            request = self._waiting.pop(0)
            free -= request.n
            admitted.append(request)
        if admitted:
            self._dispatch(self.batch.add(admitted))
        return not (stop or self._closed)

    def _dispatch(self, events: list[Event]) -> None:
        by_request: dict[int, tuple[Request, list[Event]]] = {}
        for e in events:
            by_request.setdefault(id(e.request), (e.request, []))[1].append(e)
            if e.index != 0:  # a request's n samples count once
                pass
            elif e.kind == "error":
                self._counts["errors"] += 1
            elif e.kind == "done":
                self._counts["cancelled" if e.finish_reason == "cancelled" else "completed"] += 1
        for request, batch in by_request.values():
            if request.sink is None:
                continue
            try:
                request.sink(batch)
            except Exception:  # a sink whose consumer went away (closed loop) must not stop the batch
                request.cancel()
