"""The decode core: many generations sharing the slots of one static KV cache, one forward per step.

    batch = engine.batch(slots=16)              # one cache of 16 rows x sequence_len positions
    events = batch.add([Request(prompt_ids, max_new_tokens=50, sampling=..., seed=0)])
    while batch.active:
        events += batch.step()                  # "token" events as they are sampled, then one "done" per row

`Engine.generate` / `stream` run one Batch to the end; the server's scheduler keeps one Batch for its lifetime and
adds requests between steps (continuous batching). Everything a generation can ask for is done here, once:

- prefill: new prompts are right-padded into one forward straight into free slots (a request with n > 1 samples
  prefills once and copies its cached row n - 1 times);
- decode: one forward of the active rows, which are kept dense in slots 0..n-1 (a leaving row's slot gets the
  last row). The forward covers a bucket of rows (the next power of two, or every slot with `fixed_slots`; the
  spare rows decode a dummy token at position 0 of a free slot) so a compiled step needs few graphs;
- sampling: per-row SamplingParams and a per-row seeded torch.Generator (row r of a request seeded s draws from
  seed s + r), so a request samples the same tokens alone or inside any batch;
- log-probabilities of the sampled token and its top alternatives, and of the prompt (from the same prefill);
- stop tokens and stop strings (text that may begin a stop string is held back until it is decided);
- the calculator tool: text between <|python_start|> and <|python_end|> is evaluated and its result is forced into
  the row as <|output_start|> result <|output_end|> (the model still reads those tokens, one step each);
- context shift: a row whose context is full keeps its last sequence_len // 2 tokens, re-prefilled, and goes on;
- attention capture: a finished row's attention maps, by one full forward over its tokens.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from embergpt.inference.kv_cache import SlotView
from embergpt.inference.stop_text import StopText
from embergpt.sampling import SamplingParams, sample_rows

if TYPE_CHECKING:
    from embergpt.inference.engine import Engine

PREFILL_TOKENS = 2048  # prompts prefilled together, counted right-padded (bounds the [B, T, V] logits)
MAX_LOGPROBS = 20
TOOL_TOKENS = ("<|python_start|>", "<|python_end|>", "<|output_start|>", "<|output_end|>")
MAX_TOOL_TOKENS = 256  # a tool call longer than this is not evaluated


@dataclass(eq=False)
class Request:
    """One generation: a prompt and what to do with it. `cancel()` is safe from any thread."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.0))
    seed: int | None = None  # None: a random seed per row
    stop_ids: frozenset[int] = frozenset()  # the row ends at one of these (not part of the text)
    stop_strings: tuple[str, ...] = ()  # the row ends before one of these texts (needs a tokenizer)
    n: int = 1  # samples of this prompt, sharing one prefill
    logprobs: int | None = None  # None: none; 0: the sampled token's; k: and the top k alternatives
    prompt_logprobs: int | None = None  # the same for the prompt's tokens (from the prefill)
    tools: bool = False  # run the calculator tool (needs a tokenizer with the tool tokens)
    context_shift: bool = False
    return_attention: bool = False
    text: bool = False  # emit text deltas with each token (needs a tokenizer)
    sink: Callable[[list[Event]], None] | None = None  # the scheduler's consumer of this request's events
    cancelled: bool = False
    submitted_at: float = 0.0

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Event:
    """What a row reports. kind: "prompt" (prompt_logprobs), "token", "done" or "error". A "done" after a stop
    token carries that token (with its logprob and top_logprobs when asked), which is not a "token" event."""

    kind: str
    request: Request
    index: int = 0  # which of the request's n samples
    token: int | None = None
    text: str = ""  # output text this token completes (token events) or releases at the end (done)
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    forced: bool = False  # a tool-output token inserted by the core, not sampled
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attention: list[torch.Tensor] | None = None  # per layer [H, T, T] (cpu, float32)
    prompt_logprobs: list[tuple[float | None, list[tuple[int, float]]]] | None = None
    error: str | None = None


class _Row:
    """One sample of a request in a slot: its tokens and everything decided on the host."""

    def __init__(self, request: Request, index: int, generator: torch.Generator) -> None:
        self.request, self.index, self.generator = request, index, generator
        self.context = list(request.prompt_ids)  # what the cache holds (+ the next input token); shifts
        self.generated: list[int] = []
        self.pos = 0  # tokens in this row's cache
        self.forced: deque[int] = deque()
        self.tool: list[int] | None = None  # tokens of an open tool call
        self.text: StopText | None = None
        self.stop_token: tuple[int, float | None, list | None] | None = None  # (id, logprob, top) of a stop token


class Batch:
    """Rows of generation in the slots of one cache; see the module docstring.

    fixed_slots: every decode forward covers all slots (one graph per window for a compiled step) instead of the
    next power of two of the active rows. vocab_limit: ids >= this are never sampled (a tokenizer smaller than the
    model's vocabulary).
    """

    def __init__(
        self,
        engine: Engine,
        slots: int,
        max_len: int | None = None,
        fixed_slots: bool = False,
        vocab_limit: int | None = None,
        reuse_prefix: bool = False,
    ) -> None:
        if slots < 1:
            raise ValueError(f"a batch needs at least one slot, got {slots}")
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.slots, self.fixed_slots = slots, fixed_slots
        self.vocab_limit = vocab_limit
        self.cache = engine.new_cache(slots, max_len) if engine.supports_kv_cache else None
        self.max_len = self.cache.max_len if self.cache is not None else (max_len or engine.sequence_len or 2**31)
        self.rows: list[_Row] = []
        self._views: dict[tuple[int, int], SlotView] = {}
        self.tool_ids = self._tool_token_ids()
        self.counts = dict(steps=0, rows=0, prefills=0, tokens=0, prefill_tokens=0, reused_tokens=0)
        # reuse_prefix (a one-slot batch: a chat session): the slot's cache keeps what the last row left in it,
        # and a new prompt that starts with those tokens only prefills the rest
        if reuse_prefix and slots != 1:
            raise ValueError("reuse_prefix needs a batch of one slot")
        self.reuse_prefix = reuse_prefix and self.cache is not None
        self._cached_ids: list[int] = []

    # ------------------------------------------------------------------ admission

    @property
    def active(self) -> int:
        return len(self.rows)

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    def add(self, requests: Sequence[Request]) -> list[Event]:
        """Prefill `requests` into free slots (raises ValueError when they do not fit); returns their first events."""
        if sum(r.n for r in requests) > self.free:
            raise ValueError(f"{sum(r.n for r in requests)} rows do not fit the {self.free} free slots")
        events: list[Event] = []
        for group in _prefill_groups(requests):
            try:
                events += self._prefill(group)
            except (RuntimeError, ValueError) as e:
                events += [Event("error", r, i, error=f"{type(e).__name__}: {e}") for r in group for i in range(r.n)]
        return events

    def _prefill(self, requests: list[Request]) -> list[Event]:
        engine, start = self.engine, len(self.rows)
        lengths = [len(r.prompt_ids) for r in requests]
        ids = torch.zeros(len(requests), max(lengths), dtype=torch.long)
        for i, r in enumerate(requests):
            ids[i, : lengths[i]] = torch.tensor(r.prompt_ids, dtype=torch.long)
        ids = ids.to(engine.device)
        self.counts["prefills"] += 1
        reused = self._reusable(requests[0]) if self.reuse_prefix else 0
        self.counts["reused_tokens"] += reused
        self.counts["prefill_tokens"] += sum(lengths) - reused
        # each prompt's last logits start its reply; prompt logprobs need those of every position
        every = any(r.prompt_logprobs is not None for r in requests)
        if reused:  # only the new tokens go through the model, at the cached prefix's offset
            logits, _ = engine.prefill(ids[:, reused:], [lengths[0] - reused], self.cache, start=start,
                                       all_logits=every, offset=reused)
            if every:  # [1, T_new, V] are the logits of the prompt's end
                logits = torch.cat([logits.new_zeros(1, reused, logits.size(-1)), logits], 1)
        elif self.cache is not None:
            logits, _ = engine.prefill(ids, lengths, self.cache, start=start, all_logits=every)
        else:
            logits, every = engine.model(ids), True
        last = logits[torch.arange(len(requests), device=engine.device), torch.tensor(lengths) - 1] if every else logits
        events: list[Event] = []
        new_rows: list[_Row] = []
        row_logits = []
        for i, r in enumerate(requests):
            if r.prompt_logprobs is not None:
                events.append(Event("prompt", r, prompt_logprobs=_prompt_logprobs(logits[i, : lengths[i]],
                                                                                  r.prompt_ids, r.prompt_logprobs)))
            for j in range(r.n):
                seed = r.seed + j if r.seed is not None else secrets.randbits(63)
                row = _Row(r, j, torch.Generator(device=engine.device).manual_seed(seed))
                row.pos = lengths[i]
                if r.text or r.stop_strings:
                    row.text = StopText(self.tokenizer, r.stop_strings)
                slot = start + len(new_rows)
                if j > 0 and self.cache is not None:  # n samples share one prefill: copy the cached row
                    self.cache.copy_row_(slot, self.cache, start + len(new_rows) - j)
                new_rows.append(row)
                row_logits.append(last[i])
        self.rows.extend(new_rows)
        return events + self._accept(torch.stack(row_logits), new_rows)

    def _reusable(self, request: Request) -> int:
        """How many leading tokens of `request`'s prompt the one slot's cache already holds (at least one token
        is always prefilled: its logits start the reply)."""
        prompt, cached = request.prompt_ids, self._cached_ids
        if request.prompt_logprobs is not None or request.n != 1:
            return 0
        common = 0
        for a, b in zip(prompt, cached):
            if a != b:
                break
            common += 1
        return min(common, len(prompt) - 1)

    # ------------------------------------------------------------------ one decode step

    def step(self) -> list[Event]:
        """Drop cancelled rows, then one forward of every active row and one new token each."""
        events = self._retire([(r, "cancelled") for r in self.rows if r.request.cancelled])
        if not self.rows:
            return events
        for row in self.rows:
            # a full context (the cache + the next input token); only a context_shift row gets here, others have
            # ended with "length"
            if len(row.context) >= self.max_len and row.request.context_shift:
                self._shift(row)
        n = len(self.rows)
        tokens = [row.context[-1] for row in self.rows]
        if self.cache is None:
            logits = torch.cat([self.engine.model(torch.tensor([row.context], device=self.engine.device))[:, -1]
                                for row in self.rows])
        else:
            # a lone row gets a graph specialized to one row: measured 6.4 ms a step against 10.4 ms for the
            # dynamic graph at 2 rows (bench shape, 1 thread)
            b = self.slots if self.fixed_slots else min(self.slots, 1 << (n - 1).bit_length())
            window = self.engine.window(max(row.pos for row in self.rows) + 1, self.max_len)
            view = self._views.get((b, window))
            if view is None:
                view = self._views[(b, window)] = SlotView(self.cache, 0, b, window)
            batch_tokens = torch.tensor(tokens + [0] * (b - n), dtype=torch.long, device=self.engine.device)
            logits = self.engine.decode_step(batch_tokens, view)[:n]
            if b > n:
                self.cache.pos[n:b] = 0  # the spare rows wrote at position 0 of free slots; keep them there
        for row in self.rows:
            row.pos += 1
        self.counts["steps"] += 1
        self.counts["rows"] += n
        return events + self._accept(logits, list(self.rows))

    def _shift(self, row: _Row) -> None:
        """Keep the row's last sequence_len // 2 tokens: all but the last are prefilled into its slot, the last is
        the next step's input, as for any row."""
        keep = row.context[-(self.max_len // 2):]
        if self.cache is None:
            row.context, row.pos = keep, len(keep) - 1
            return
        slot = self.rows.index(row)
        self.cache.pos[slot] = 0
        if len(keep) > 1:
            ids = torch.tensor([keep[:-1]], dtype=torch.long, device=self.engine.device)
            self.engine.prefill(ids, None, self.cache, start=slot)
        row.context, row.pos = keep, len(keep) - 1

    # ------------------------------------------------------------------ tokens in, events out

    def _accept(self, logits: torch.Tensor, rows: list[_Row]) -> list[Event]:
        """logits [n, V] of `rows` -> one token per row (sampled or forced) -> events; finished rows retire."""
        if self.vocab_limit is not None and self.vocab_limit < logits.size(-1):
            logits = logits.clone()
            logits[:, self.vocab_limit :] = float("-inf")
        free = [i for i, row in enumerate(rows) if not row.forced]
        tokens: list[int] = [0] * len(rows)
        for i, row in enumerate(rows):
            if row.forced:
                tokens[i] = row.forced.popleft()
        if free:
            histories = [(rows[i].request.prompt_ids + rows[i].generated)
                         if rows[i].request.sampling.repetition_penalty != 1.0 else None for i in free]
            drawn = sample_rows(logits[free], [rows[i].request.sampling for i in free],
                                [rows[i].generator for i in free], histories)
            for i, t in zip(free, drawn):
                tokens[i] = t
        scores = self._logprobs(logits, rows, tokens)
        events: list[Event] = []
        done: list[tuple[_Row, str]] = []
        for i, (row, token) in enumerate(zip(rows, tokens)):
            r = row.request
            if token < 0:
                done.append((row, "error:sampling failed: the probabilities are not finite (temperature too small?)"))
                continue
            forced = i not in free
            row.generated.append(token)
            row.context.append(token)
            self.counts["tokens"] += 1
            logprob, top = scores[i] if scores is not None else (None, None)
            if token in r.stop_ids and not forced:
                row.stop_token = (token, logprob, top)  # reported on the "done" event (OpenAI's echo lists it)
                done.append((row, "stop"))
                continue
            text = row.text.push(token) if row.text is not None else ""
            events.append(Event("token", r, row.index, token=token, text=text, logprob=logprob, top_logprobs=top,
                                forced=forced))
            if row.text is not None and row.text.stopped:
                done.append((row, "stop"))
                continue
            if r.tools and self.tool_ids is not None:
                self._tool(row, token)
            if len(row.generated) >= r.max_new_tokens or row.pos + 1 > self.max_len and not r.context_shift:
                done.append((row, "length"))
        return events + self._retire(done)

    def _logprobs(self, logits: torch.Tensor, rows: list[_Row], tokens: list[int]) -> list | None:
        """(logprob of the chosen token, top-k [(id, logprob)]) per row that asked; None when none did."""
        want = [row.request.logprobs for row in rows]
        if all(k is None for k in want):
            return None
        logp = torch.log_softmax(logits.float(), dim=-1)
        k_max = max(k or 0 for k in want)
        chosen = logp.gather(1, torch.tensor(tokens, device=logp.device)[:, None])[:, 0].tolist()
        top_v, top_i = logp.topk(min(k_max, logp.size(-1)), dim=-1) if k_max else (None, None)
        top_v = top_v.tolist() if top_v is not None else None
        top_i = top_i.tolist() if top_i is not None else None
        out = []
        for i, k in enumerate(want):
            if k is None:
                out.append((None, None))
            else:
                top = list(zip(top_i[i][:k], top_v[i][:k])) if k else None
                out.append((chosen[i], top))
        return out

    def _tool_token_ids(self) -> dict[str, int] | None:
        tok = self.tokenizer
        ids = getattr(tok, "special_ids", None) if tok is not None else None
        if not ids or not all(name in ids for name in TOOL_TOKENS):
            return None
        return {name: ids[name] for name in TOOL_TOKENS}

    def _tool(self, row: _Row, token: int) -> None:
        """Track a row's tool call; at <|python_end|>, queue the calculator's result as forced tokens."""
        t = self.tool_ids
        if token == t["<|python_start|>"]:
            row.tool = []
        elif row.tool is not None and token == t["<|python_end|>"]:
            from embergpt.chat.calculator import evaluate

            expression = self.tokenizer.decode(row.tool)
            row.tool = None
            result = evaluate(expression) if len(expression) <= MAX_TOOL_TOKENS * 8 else "error: too long"
            row.forced.extend([t["<|output_start|>"], *self.tokenizer.encode(result), t["<|output_end|>"]])
        elif row.tool is not None:
            row.tool.append(token)
            if len(row.tool) > MAX_TOOL_TOKENS:
                row.tool = None  # not a tool call we will run

    # ------------------------------------------------------------------ leaving

    def _retire(self, done: list[tuple[_Row, str]]) -> list[Event]:
        """Remove finished rows (the last row moves into a freed slot) and report them."""
        if not done:
            return []
        leaving = {id(row) for row, _ in done}
        for slot in sorted((i for i, row in enumerate(self.rows) if id(row) in leaving), reverse=True):
            last = len(self.rows) - 1
            if slot != last and self.cache is not None:
                self.cache.copy_row_(slot, self.cache, last)  # keep the active rows dense
            self.rows[slot] = self.rows[last]
            self.rows.pop()
            if self.cache is not None:
                self.cache.pos[last] = 0
        if self.reuse_prefix:
            row = done[-1][0]
            self._cached_ids = row.context[: row.pos]  # what the slot's cache holds now
        events = []
        for row, reason in done:
            r = row.request
            if reason.startswith("error:"):
                events.append(Event("error", r, row.index, error=reason.removeprefix("error:")))
                continue
            tail = row.text.finish() if row.text is not None and reason != "cancelled" else ""
            attention = None
            if r.return_attention and reason != "cancelled":
                ids = r.prompt_ids + [t for t in row.generated if t not in r.stop_ids]
                attention = self.engine.attention(ids[: self.max_len])
            stop = row.stop_token if reason == "stop" else None
            events.append(Event("done", r, row.index, text=tail, finish_reason=reason,
                                prompt_tokens=len(r.prompt_ids), completion_tokens=len(row.generated),
                                attention=attention, token=stop[0] if stop else None,
                                logprob=stop[1] if stop else None, top_logprobs=stop[2] if stop else None))
        return events

    def fail_all(self, message: str) -> list[Event]:
        """End every row with an error (the server shutting down, or a failed step)."""
        events = [Event("error", row.request, row.index, error=message) for row in self.rows]
        self.rows = []
        if self.cache is not None:
            self.cache.reset()
        return events


def _prefill_groups(requests: Sequence[Request]) -> list[list[Request]]:
    """Consecutive requests whose right-padded prompts fit PREFILL_TOKENS together; a long prompt or a request
    with n > 1 samples goes alone."""
    groups: list[list[Request]] = []
    width = 0
    for r in requests:
        n = len(r.prompt_ids)
        if (groups and r.n == 1 and groups[-1][-1].n == 1
                and (len(groups[-1]) + 1) * max(width, n) <= PREFILL_TOKENS):
            groups[-1].append(r)
            width = max(width, n)
        else:
            groups.append([r])
            width = n
    return groups


def _prompt_logprobs(logits: torch.Tensor, ids: list[int], k: int) -> list[tuple[float | None, list]]:
    """Per prompt token: (its logprob given the tokens before it, top-k [(id, logprob)]); the first has none."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [T, V]: position t predicts token t + 1
    target = torch.tensor(ids[1:], device=logp.device)
    chosen = logp[:-1].gather(1, target[:, None])[:, 0].tolist() if len(ids) > 1 else []
    tops: list[list[tuple[int, float]]] = [[] for _ in ids]
    if k:
        v, i = logp[:-1].topk(min(k, logp.size(-1)), dim=-1)
        for t, (vs, is_) in enumerate(zip(v.tolist(), i.tolist())):
            tops[t + 1] = list(zip(is_, vs))
    return [(None, [])] + [(c, tops[t + 1]) for t, c in enumerate(chosen)]


def validate_request(request: Request, batch_slots: int, tokenizer: Any = None) -> None:
    """Raise ValueError for a request the core cannot run (checked before it is queued)."""
    if not request.prompt_ids:
        raise ValueError("empty prompt: give at least one token")
    if request.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
    if not 1 <= request.n <= batch_slots:
        raise ValueError(f"n must be in 1..{batch_slots} (the batch's slots), got {request.n}")
    for k in (request.logprobs, request.prompt_logprobs):
        if k is not None and not 0 <= k <= MAX_LOGPROBS:
            raise ValueError(f"logprobs must be in 0..{MAX_LOGPROBS}, got {k}")
    if (request.stop_strings or request.text or request.tools) and tokenizer is None:
        raise ValueError("stop strings, text and tools need a tokenizer")


