"""Continuous batching: one model, one worker thread, many concurrent generations.

The worker owns a static KV cache of `max_batch` rows (slots). Active requests occupy slots 0..n-1 (kept dense):

    loop:
      admit  - take waiting requests while slots are free; prefill their prompts together (right-padded, one
               forward) straight into the free slots (a view of the cache), sample each one's first token
      decode - one forward of all n active rows, one new token each, every row at its own position
      retire - finished or cancelled rows leave; the last active row moves into the freed slot (copy_row_)

New requests therefore join the running batch at the next step boundary instead of waiting for it to drain.
Each forward sees only the rows in use and the first `bucket(max position)` cache positions (a view, no copy),
so a lone request costs a 1-row forward and attention never scans the unused end of the cache.

Every request has its own SamplingParams and its own seeded torch.Generator, and each row draws its token from
its own generator (rows sharing params are filtered and softmaxed together): a request draws the same tokens alone
or inside a batch (up to float rounding of the batched matmuls; greedy requests are identical unless two logits tie
within that rounding).

Results leave the worker through each job's `sink` (called on the worker thread with a list of events); the HTTP
layer's sink hands them to its event loop with `loop.call_soon_threadsafe` (once per step for all its jobs), so the
event loop never runs model code and never waits for it.
Models without KV-cache support (`supports_kv_cache = False`, the teaching ladder) are run uncached: a full
forward over each row's sequence per step.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from embergpt.inference.kv_cache import KVCache
from embergpt.sampling import SamplingParams, draw, filter_logits, sample_next_token

NONFINITE = "the probabilities are not finite (temperature too small?)"
BUCKET = 64  # cache positions are exposed to a forward in multiples of this
PREFILL_TOKENS = 2048  # prompts prefilled together, counted right-padded (bounds the [B, T, V] logits)


class SchedulerFull(Exception):
    """The waiting queue is full; the caller should retry later."""


class SchedulerClosed(Exception):
    """The scheduler was shut down."""


@dataclass
class Event:
    """What a job reports. kind: "token" (token), "done" (finish_reason, usage, attention) or "error" (error)."""

    kind: str
    token: int | None = None
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attention: list[torch.Tensor] | None = None  # per layer [H, T, T] (cpu, float32), when asked for
    error: str | None = None


@dataclass(eq=False)
class Job:
    """One generation request. `sink(events)` is called on the worker thread; it must not block."""

    prompt_ids: list[int]
    max_tokens: int
    params: SamplingParams
    sink: Callable[[list[Event]], None]
    seed: int | None = None
    stop_ids: frozenset[int] = frozenset()
    return_attention: bool = False
    # worker state
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    pos: int = 0  # tokens in this job's cache row
    generator: torch.Generator | None = None
    submitted_at: float = 0.0
    error: str | None = None

    def cancel(self) -> None:
        """Ask the worker to drop this job at the next step boundary (thread-safe)."""
        self.cancelled = True


class KVCacheView(KVCache):
    """Rows [start, stop) and the first `length` positions of a base KVCache, sharing its memory.

    Writes through the view (update, advance) land in the base cache. `max_pos` is the caller's host-side bound on
    the rows' positions, so capacity checks need no device sync.
    """

    def __init__(self, base: KVCache, start: int, stop: int, length: int, max_pos: int) -> None:
        # No super().__init__: a view allocates nothing.
        self.k = base.k[:, start:stop, :, :length]
        self.v = base.v[:, start:stop, :, :length]
        self.pos = base.pos[start:stop]
        self.max_len = length
        self.max_pos = max_pos


def _bucket(n: int, limit: int) -> int:
    return min(limit, -(-n // BUCKET) * BUCKET)


class Scheduler:
    """Runs jobs on a worker thread with continuous batching. `submit(job)`; `close()` when done.

    model: a GPT (or any module with `config` and forward(idx [B, T], kv_cache=...) -> logits [B, T, V]).
    max_batch: rows decoded together. max_queue: jobs allowed to wait for a row (submit raises SchedulerFull
    beyond it). vocab_limit: ids >= this are never sampled (a tokenizer smaller than the model's vocabulary).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_batch: int = 16,
        max_queue: int = 256,
        vocab_limit: int | None = None,
        autostart: bool = True,
    ) -> None:
        self.model = model
        self.config = model.config
        self.max_batch = max_batch
        self.vocab_limit = vocab_limit
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.cached = bool(getattr(model, "supports_kv_cache", True))
        self.cache = (
            KVCache.for_model(self.config, max_batch, dtype=self.dtype, device=self.device) if self.cached else None
        )
        self.max_len = self.config.sequence_len
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=max_queue)
        self._active: list[Job] = []
        self._closed = False
        self._counts = dict(submitted=0, completed=0, cancelled=0, errors=0, tokens=0, steps=0, rows=0, prefills=0)
        self._thread = threading.Thread(target=self._run, name="embergpt-scheduler", daemon=True)
        if autostart:
            self._thread.start()

    def start(self) -> None:
        """Start the worker (only needed with autostart=False, e.g. to queue several jobs first)."""
        if not self._thread.is_alive():
            self._thread.start()

    # ---- public, any thread

    def submit(self, job: Job) -> Job:
        """Queue `job`; raises SchedulerFull when the queue is full and SchedulerClosed after close()."""
        if self._closed:
            raise SchedulerClosed("the scheduler is shut down")
        job.submitted_at = time.monotonic()
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise SchedulerFull(f"{self._queue.maxsize} requests are already waiting") from None
        self._counts["submitted"] += 1
        return job

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current step; jobs still queued or running end with an error event."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def stats(self) -> dict[str, Any]:
        c = self._counts
        return {
            "active": len(self._active),
            "queued": self._queue.qsize(),
            "max_batch": self.max_batch,
            "submitted": c["submitted"],
            "completed": c["completed"],
            "cancelled": c["cancelled"],
            "errors": c["errors"],
            "tokens_generated": c["tokens"],
            "decode_steps": c["steps"],
            "decode_rows": c["rows"],
            "prefill_forwards": c["prefills"],
            "mean_batch": round(c["rows"] / c["steps"], 2) if c["steps"] else 0.0,
        }

    def generate_async(
        self,
        prompt_ids: list[int],
        max_tokens: int,
        params: SamplingParams | None = None,
        seed: int | None = None,
        stop_ids: frozenset[int] = frozenset(),
    ) -> concurrent.futures.Future[list[int]]:
        """Queue one generation; the future resolves to its generated ids (a stop token included)."""
        future: concurrent.futures.Future[list[int]] = concurrent.futures.Future()

        def sink(events: list[Event]) -> None:
            for e in events:
                if future.done():
                    return
                if e.kind == "error":
                    future.set_exception(RuntimeError(e.error))
                elif e.kind == "done":
                    future.set_result(list(job.generated))

        job = Job(list(prompt_ids), max_tokens, params or SamplingParams(), sink, seed, stop_ids)
        future.add_done_callback(lambda f: job.cancel() if f.cancelled() else None)
        self.submit(job)
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
        """Blocking convenience (notebooks, tests): the generated ids of one job (a stop token included)."""
        future = self.generate_async(prompt_ids, max_tokens, params, seed, stop_ids)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("generation did not finish in time") from None

    # ---- worker thread

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                if not self._admit():
                    break
                if self._active:
                    try:
                        self._decode_step()
                    except Exception as e:  # a bug must not kill the worker: fail the batch, keep serving
                        self._fail_all(f"{type(e).__name__}: {e}")
        self._fail_all("the server is shutting down")
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                self._emit(job, [Event("error", error="the server is shutting down")])

    def _admit(self) -> bool:
        """Move waiting jobs into free slots (blocking while idle); False once close() was called."""
        block = not self._active
        waiting: list[Job] = []
        stop = False
        while len(self._active) + len(waiting) < self.max_batch:
            try:
                job = self._queue.get(timeout=0.5) if block else self._queue.get_nowait()
            except queue.Empty:
                if block and not self._closed:
                    continue
                break
            if job is None:
                stop = True
                break
            block = False
            if job.cancelled:
                self._finish(job, "cancelled")
            else:
                waiting.append(job)
        for group in self._prefill_groups(waiting):
            try:
                self._prefill(group)
            except Exception as e:
                for job in group:
                    self._counts["errors"] += 1
                    job.finished = True
                    self._emit(job, [Event("error", error=f"{type(e).__name__}: {e}")])
        return not (stop or self._closed)

    @staticmethod
    def _prefill_groups(jobs: list[Job]) -> list[list[Job]]:
        """Consecutive jobs whose right-padded prompts fit PREFILL_TOKENS together (a long prompt goes alone)."""
        groups: list[list[Job]] = []
        width = 0
        for job in jobs:
            n = len(job.prompt_ids)
            if groups and (len(groups[-1]) + 1) * max(width, n) <= PREFILL_TOKENS:
                groups[-1].append(job)
                width = max(width, n)
            else:
                groups.append([job])
                width = n
        return groups

    def _prefill(self, jobs: list[Job]) -> None:
        """Prefill the prompts of `jobs` in one forward, right-padded, into the next free slots; sample each one's
        first token. Padding writes garbage to cache positions past a prompt's end, but a query only sees keys up
        to its own position, and each of those positions is written by a decode step before it is ever read."""
        lengths = [len(j.prompt_ids) for j in jobs]
        width = max(lengths)
        ids = torch.zeros(len(jobs), width, dtype=torch.long)
        for i, job in enumerate(jobs):
            ids[i, : lengths[i]] = torch.tensor(job.prompt_ids, dtype=torch.long)
            seed = job.seed if job.seed is not None else secrets.randbits(63)
            job.generator = torch.Generator(device=self.device).manual_seed(seed)
            job.pos = lengths[i]
        ids = ids.to(self.device)
        self._counts["prefills"] += 1
        start = len(self._active)
        if self.cached:
            rows = slice(start, start + len(jobs))
            self.cache.pos[rows] = 0
            view = KVCacheView(self.cache, rows.start, rows.stop, _bucket(width, self.max_len), 0)
            logits = self.model(ids, kv_cache=view)
            self.cache.pos[rows] = torch.tensor(lengths, device=self.device)
        else:
            logits = self.model(ids)
        last = torch.tensor(lengths, device=self.device) - 1
        tokens = self._sample(logits[torch.arange(len(jobs), device=self.device), last], jobs)
        self._active.extend(jobs)  # into the slots just prefilled, in order
        self._accept(tokens, jobs)

    def _decode_step(self) -> None:
        jobs = [j for j in self._active if not j.cancelled]
        if len(jobs) != len(self._active):
            self._retire([(j, "cancelled") for j in self._active if j.cancelled])
            jobs = list(self._active)
            if not jobs:
                return
        last = torch.tensor([[j.generated[-1]] for j in jobs], dtype=torch.long, device=self.device)
        if self.cached:
            max_pos = max(j.pos for j in jobs)
            view = KVCacheView(self.cache, 0, len(jobs), _bucket(max_pos + 1, self.max_len), max_pos)
            logits = self.model(last, kv_cache=view)[:, -1]
        else:
            rows = []
            for j in jobs:
                seq = torch.tensor([j.prompt_ids + j.generated], dtype=torch.long, device=self.device)
                rows.append(self.model(seq)[:, -1])
            logits = torch.cat(rows)
        for j in jobs:
            j.pos += 1
        self._counts["steps"] += 1
        self._counts["rows"] += len(jobs)
        self._accept(self._sample(logits, jobs), jobs)

    def _sample(self, logits: torch.Tensor, jobs: list[Job]) -> list[int | str]:
        """logits [n, V] -> one token per job, each job with its own params and generator.

        A job whose sampling fails gets an error message instead of a token; the other rows are unaffected.
        """
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits = logits.clone()
            logits[:, self.vocab_limit :] = float("-inf")
        plain_greedy = [j.params.greedy and j.params.repetition_penalty == 1.0 for j in jobs]
        if all(plain_greedy):
            return logits.argmax(dim=-1).tolist()
        out: list[torch.Tensor | str | None] = [None] * len(jobs)
        # Rows sharing their params (and no repetition penalty) are filtered, softmaxed and drawn together; each
        # row's draw uses its own generator, exactly as sample_next_token draws for a single row.
        groups: dict[SamplingParams, list[int]] = {}
        for i, job in enumerate(jobs):
            if plain_greedy[i]:
                out[i] = logits[i : i + 1].argmax(dim=-1)
            elif job.params.repetition_penalty == 1.0:
                groups.setdefault(job.params, []).append(i)
        for params, rows in groups.items():
            try:
                probs = filter_logits(logits[rows].float(), params).softmax(dim=-1)
                drawn = draw(probs, [jobs[i].generator for i in rows])  # one seeded uniform per row
                for k, i in enumerate(rows):
                    out[i] = drawn[k : k + 1]
            except (RuntimeError, ValueError) as e:
                for i in rows:
                    out[i] = f"sampling failed: {e}"
        for i, job in enumerate(jobs):
            if out[i] is None:  # repetition penalty: the row's own history matters, sample it alone
                prev = torch.tensor([job.prompt_ids + job.generated], dtype=torch.long, device=self.device)
                try:
                    out[i] = sample_next_token(logits[i : i + 1], job.params, job.generator, prev)
                except (RuntimeError, ValueError) as e:
                    out[i] = f"sampling failed: {e}"
        tensors = [t for t in out if not isinstance(t, str)]
        values = iter(torch.cat(tensors).tolist() if tensors else [])  # one host sync for the whole batch
        tokens = [t if isinstance(t, str) else next(values) for t in out]
        # draw() marks a row whose probabilities were not finite with -1
        return [f"sampling failed: {NONFINITE}" if t == -1 else t for t in tokens]

    def _accept(self, tokens: list[int | str], jobs: list[Job]) -> None:
        """Record each job's new token, report it, and retire the jobs that are done."""
        done: list[tuple[Job, str]] = []
        for job, tok in zip(jobs, tokens):
            if isinstance(tok, str):
                job.error = tok
                done.append((job, "error"))
                continue
            job.generated.append(tok)
            self._counts["tokens"] += 1
            if tok in job.stop_ids:
                done.append((job, "stop"))
                continue
            self._emit(job, [Event("token", token=tok)])
            if job.cancelled:
                done.append((job, "cancelled"))
            elif len(job.generated) >= job.max_tokens or job.pos + 1 > self.max_len:
                done.append((job, "length"))
        if done:
            self._retire(done)

    def _retire(self, done: list[tuple[Job, str]]) -> None:
        slots = {id(j): i for i, j in enumerate(self._active)}
        for i in sorted((slots[id(j)] for j, _ in done), reverse=True):
            last = len(self._active) - 1
            if i != last and self.cached:
                self.cache.copy_row_(i, self.cache, last)  # keep the active rows dense
            self._active[i] = self._active[last]
            self._active.pop()
        for job, reason in done:
            self._finish(job, reason)

    def _finish(self, job: Job, reason: str) -> None:
        job.finished = True
        if reason == "error":
            self._counts["errors"] += 1
            self._emit(job, [Event("error", error=job.error)])
            return
        self._counts["cancelled" if reason == "cancelled" else "completed"] += 1
        attention = None
        if job.return_attention and reason != "cancelled":
            attention = self._attention(job)
        self._emit(
            job,
            [
                Event(
                    "done",
                    finish_reason=reason,
                    prompt_tokens=len(job.prompt_ids),
                    completion_tokens=len(job.generated),
                    attention=attention,
                )
            ],
        )

    def _attention(self, job: Job) -> list[torch.Tensor] | None:
        """Attention probabilities over prompt + generated tokens (a stop token excluded): per layer [H, T, T]."""
        ids = job.prompt_ids + [t for t in job.generated if t not in job.stop_ids]
        seq = torch.tensor([ids[: self.max_len]], dtype=torch.long, device=self.device)
        try:
            _, att = self.model(seq, return_attention=True)
        except TypeError:  # a model without attention output
            return None
        if not att or any(a is None for a in att):
            return None
        return [a[0].float().cpu() for a in att]

    def _fail_all(self, message: str) -> None:
        jobs, self._active = self._active, []
        for job in jobs:
            self._counts["errors"] += 1
            job.finished = True
            self._emit(job, [Event("error", error=message)])
        if self.cache is not None:
            self.cache.reset()

    def _emit(self, job: Job, events: list[Event]) -> None:
        try:
            job.sink(events)
        except Exception:  # a sink whose consumer went away (closed loop) must not stop the batch
            job.cancelled = True
