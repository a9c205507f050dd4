"""The generation engine: prefill, one small decode step, and `generate` / `stream` on top.

    engine = Engine(model, tokenizer)                 # optional: dtype=torch.bfloat16, compile="default"
    ids = engine.generate([prompt_ids], max_new_tokens=50, sampling=SamplingParams(temperature=0.8), seed=0)
    for token in engine.stream(prompt_ids, max_new_tokens=50): ...
    for text in engine.stream_text("To be", max_new_tokens=50): print(text, end="")

Three layers, read top to bottom:
- `prefill(ids, lengths, cache)`: right-padded prompts [B, T] through the model in ONE forward, into a static KV
  cache; each row's position is then set to its real length and its logits taken at its last real token. The
  padding writes garbage into the cache beyond each row's length, but a query at position p only attends to keys
  <= p, and decode steps overwrite those slots before any query can reach them.
- `decode_step(tokens, cache)`: one token per row in, the next logits out: one model forward on [B, 1] and nothing
  else, no host synchronization. It is the only function that is compiled (`compile=`, see `compile.py`) and the
  hot path of everything: `generate`, `stream`, the server and the samples printed during training.
- `generate` / `stream`: a `Batch` (batch.py: slots of one cache, per-row sampling with seeded generators, stop
  tokens and strings, the calculator tool, context shift, attention capture) driven to the end. The server's
  scheduler drives the same `Batch`, with requests joining and leaving at every step.

Models with `supports_kv_cache = False` (the teaching-ladder models) run without a cache: a full forward over
each row's sequence at every step, giving the same tokens, only slower.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from embergpt.inference.batch import Batch, Event, Request
from embergpt.inference.compile import compile_step, normalize_mode, use_persistent_cache
from embergpt.inference.kv_cache import KVCache, SlotView
from embergpt.inference.streaming import TextStreamer
from embergpt.sampling import SamplingParams

Prompt = Sequence[int] | torch.Tensor | str
GREEDY = SamplingParams(temperature=0.0)
WINDOW_BUCKET = 128  # the one bucket constant: a forward sees cache positions in multiples of this
CACHE_BUCKET = 64  # compiled engines round a call's cache length up to this, so nearby lengths share a graph


class Engine:
    """Generation on top of a model with forward(idx, targets=None, kv_cache=None, return_attention=False).

    dtype: when given, the model's floating-point weights are converted to it in place (weights are stored in the
    compute dtype, so each decode step reads half the bytes in bf16); buffers such as the RoPE tables keep theirs.
    compile: "off" (or False), "default" (or True) or "max-autotune": see `embergpt.inference.compile`.
    max-autotune compiles for much longer (a minute or more on 2 cores) and, on CPU, freezes the weights: build a
    new Engine after changing them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = False,
    ) -> None:
        self.compile_mode = normalize_mode(compile)
        self.model = model.eval()
        self.tokenizer = tokenizer
        params = list(model.parameters())
        self.device = params[0].device if params else torch.device("cpu")
        if dtype is not None:
            with torch.no_grad():
                for p in params:
                    if p.is_floating_point() and p.dtype != dtype:
                        p.data = p.data.to(dtype)
        floating = [p.dtype for p in params if p.is_floating_point()]
        self.dtype = dtype or (floating[0] if floating else torch.float32)
        self.config = getattr(model, "config", None)
        self.sequence_len: int | None = getattr(self.config, "sequence_len", None)
        self.supports_kv_cache = bool(getattr(model, "supports_kv_cache", True))
        if not self.supports_kv_cache:
            self.compile_mode = "off"
        if self.compile:  # a bad cache variable is an error here, not after "compiling the decode step..."
            use_persistent_cache()
        self._step: Callable[[torch.Tensor, SlotView], torch.Tensor] | None = None

    @property
    def compile(self) -> bool:
        return self.compile_mode != "off"

    def decode_eagerly(self) -> None:
        """Drop the compiled step (e.g. after a failed compile): decode_step runs the model eagerly from now on."""
        self.compile_mode, self._step = "off", None

    # ------------------------------------------------------------------ building blocks

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` tokens (default: the model's sequence_len)."""
        if self.config is None:
            raise ValueError("this model has no config; it cannot use a KV cache")
        return KVCache.for_model(self.config, batch_size, max_len, dtype=self.dtype, device=self.device)

    def encode(self, text: str) -> list[int]:
        """Tokenize a prompt, starting with the tokenizer's BOS token when it has one (as training documents do)."""
        if self.tokenizer is None:
            raise ValueError("this Engine has no tokenizer: pass token ids, or Engine(model, tokenizer)")
        ids = list(self.tokenizer.encode(text))
        bos = getattr(self.tokenizer, "bos_id", None)
        return [bos, *ids] if bos is not None else ids

    def prompt_ids(self, prompts: Prompt | Sequence[Prompt]) -> list[list[int]]:
        """One prompt (ids, 1-D tensor or text) or a sequence of them -> validated id lists."""
        if isinstance(prompts, str) or (isinstance(prompts, torch.Tensor) and prompts.dim() == 1):
            prompts = [prompts]
        elif isinstance(prompts, torch.Tensor):
            prompts = list(prompts)
        elif len(prompts) > 0 and not isinstance(prompts[0], (str, torch.Tensor, Sequence)):
            prompts = [prompts]  # a flat list of ints is one prompt
        rows: list[list[int]] = []
        for p in prompts:
            ids = self.encode(p) if isinstance(p, str) else [int(t) for t in p]
            if not ids:
                raise ValueError("empty prompt: give at least one token (or use a tokenizer with a BOS token)")
            rows.append(ids)
        if not rows:
            raise ValueError("no prompts given")
        vocab = getattr(self.config, "vocab_size", None)
        if vocab is not None:
            bad = [t for ids in rows for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"token id {bad[0]} is outside the model's vocabulary 0..{vocab - 1}")
        return rows

    def window(self, needed: int, cache_len: int) -> int:
        """How many cache positions a forward attends over when its rows need `needed` (the longest row + new)."""
        if self.compile and self.device.type == "cuda":
            return cache_len  # one CUDA graph per cache shape
        return min(cache_len, -(-needed // WINDOW_BUCKET) * WINDOW_BUCKET)

    @torch.no_grad()
    def prefill(
        self,
        ids: torch.Tensor | Sequence[Sequence[int]],
        lengths: Sequence[int] | None = None,
        cache: KVCache | None = None,
        max_new_tokens: int | None = None,
        return_attention: bool = False,
        start: int = 0,
        all_logits: bool = False,
        offset: int = 0,
    ) -> Any:
        """Run the prompts [B, T] (right-padded; `lengths` per row, default all T) through the model in one pass,
        into rows start..start+B-1 of `cache` (default: a new cache of B rows sized to T + max_new_tokens, or to
        sequence_len). The rows' caches must hold `offset` tokens already (0: empty; more: a prefix reused from
        an earlier turn, see Batch(reuse_prefix=True)): the prompts are their continuations.

        Returns (logits [B, V] at each row's last real token, cache), or the logits of every position [B, T, V]
        when all_logits, plus the attention (a list per layer of [B, H, T, T_window]) when return_attention.
        """
        if not isinstance(ids, torch.Tensor):
            rows = self.prompt_ids(list(ids))
            ids = _right_padded(rows)
            lengths = lengths or [len(r) for r in rows]
        ids = ids.to(self.device)
        B, T = ids.shape
        lengths = list(lengths) if lengths is not None else [T] * B
        if cache is None:
            max_len = None if max_new_tokens is None else self.cache_len(T, max_new_tokens)
            cache = self.new_cache(B, max_len)
        if cache.max_len < offset + T:
            raise ValueError(f"KV cache full: a prompt of {offset + T} tokens exceeds max_len={cache.max_len}; "
                             "use a shorter prompt")
        cache.pos[start : start + B] = offset
        view = SlotView(cache, start, B, self.window(offset + T, cache.max_len))
        ends = torch.tensor(lengths, device=self.device)
        out = self.model(ids, kv_cache=view, return_attention=return_attention,
                         logits_at=None if all_logits else ends - 1)
        logits, attention = out if return_attention else (out, None)
        cache.pos[start : start + B] = ends + offset
        cache.max_pos = max(cache.max_pos, offset + max(lengths))
        return (logits, cache, attention) if return_attention else (logits, cache)

    def cache_len(self, prompt_len: int, max_new_tokens: int) -> int:
        """The cache length of one generate() call; compiled engines round it up so nearby lengths share a graph."""
        n = prompt_len + max(max_new_tokens, 1)
        if self.compile:
            n = -(-n // CACHE_BUCKET) * CACHE_BUCKET
        return min(n, self.sequence_len) if self.sequence_len is not None else n

    def _forward_step(self, tokens: torch.Tensor, view: SlotView) -> torch.Tensor:
        return self.model(tokens[:, None], kv_cache=view)[:, -1]

    def _step_fn(self) -> Callable[[torch.Tensor, SlotView], torch.Tensor]:
        if self._step is None:
            if not self.compile:
                self._step = self._forward_step
            else:
                self._step = compile_step(self._forward_step, self.compile_mode, self.device,
                                          shape_key=lambda tokens, view: (tokens.size(0), view.k.size(3),
                                                                          view.window))
        return self._step

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: KVCache | SlotView, return_attention: bool = False) -> Any:
        """The hot path: feed tokens [B] (one per row, at each row's position) -> next logits [B, V] (fp32).

        `cache` is a whole KVCache (every row, the window from its host-side max_pos) or a SlotView the caller
        chose. With return_attention, returns (logits, attention: list per layer of [B, H, 1, T_window]) via the
        explicit (uncompiled) attention path.
        """
        if isinstance(cache, KVCache):
            cache.check_capacity(1)  # host-side, no device sync
            view = SlotView(cache, 0, cache.batch_size, self.window(cache.max_pos + 1, cache.max_len))
            cache.max_pos += 1  # the view advances `pos` on the device; keep the host-side bound in step
        else:
            view = cache
        if return_attention:
            logits, attention = self.model(tokens[:, None], kv_cache=view, return_attention=True)
            return logits[:, -1], attention
        return self._step_fn()(tokens, view)

    @torch.no_grad()
    def attention(self, ids: Sequence[int]) -> list[torch.Tensor]:
        """Attention probabilities of one sequence, per layer [H, T, T] (cpu, float32), by a full forward."""
        _, att = self.model(torch.tensor([list(ids)], device=self.device), return_attention=True)
        return [a[0].float().cpu() for a in att]

    def batch(self, slots: int, max_len: int | None = None, **kwargs: Any) -> Batch:
        """A decode batch of `slots` rows over one cache of `max_len` positions (see batch.Batch)."""
        return Batch(self, slots, max_len, **kwargs)

    # ------------------------------------------------------------------ generation

    def _requests(
        self,
        prompts: Prompt | Sequence[Prompt],
        max_new_tokens: int,
        sampling: SamplingParams | None,
        seed: int | None,
        stop_tokens: Sequence[int],
        n_samples: int,
        return_attention: bool,
        context_shift: bool,
    ) -> tuple[list[Request], int]:
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if seed is not None and not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
        if return_attention and context_shift:
            raise ValueError("return_attention and context_shift cannot be combined: the maps cover one context")
        rows = self.prompt_ids(prompts)
        longest = max(len(r) for r in rows)
        shift = context_shift and self.sequence_len is not None
        if self.sequence_len is not None:
            need = longest + (min(1, max_new_tokens) if shift else max_new_tokens)
            if need > self.sequence_len:
                raise ValueError(
                    f"prompt ({longest} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                    f"sequence_len={self.sequence_len}; shorten the prompt or ask for fewer tokens"
                )
        max_len = self.sequence_len if shift else self.cache_len(longest, max_new_tokens)
        if self.config is not None and self.supports_kv_cache:
            self._check_cache_fits(len(rows) * n_samples, max_len)
        requests = [
            Request(ids, max_new_tokens, sampling or GREEDY, None if seed is None else seed + i * n_samples,
                    stop_ids=frozenset(stop_tokens), n=n_samples, context_shift=shift,
                    return_attention=return_attention)
            for i, ids in enumerate(rows)
        ]
        return requests, max_len

    def _check_cache_fits(self, rows: int, max_len: int) -> None:
        """Refuse, before allocating, a KV cache larger than the memory there is (a one-line ValueError)."""
        need = KVCache.bytes_for(self.config, rows, max_len, self.dtype)
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
        else:
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                return
        if need > free:
            raise ValueError(f"the KV cache for {rows} rows of {max_len} positions needs {need / 2**30:.1f} GiB, "
                             f"{free / 2**30:.1f} GiB is free: ask for fewer samples or tokens")

    def _run(self, requests: list[Request], max_len: int | None) -> Iterator[Event]:
        """Drive one Batch holding every request to the end, yielding its events."""
        if requests[0].max_new_tokens == 0:
            return
        batch = self.batch(sum(r.n for r in requests), max_len)
        yield from batch.add(requests)
        while batch.active:
            yield from batch.step()

    @torch.no_grad()
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        max_new_tokens: int = 64,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] = (),
        n_samples: int = 1,
        return_attention: bool = False,
        context_shift: bool = False,
    ) -> list[list[int]] | tuple[list[list[int]], list[torch.Tensor]]:
        """Generate up to max_new_tokens after each prompt; returns the new ids, one list per row.

        prompts: one prompt (list of ids, 1-D tensor, or text when the Engine has a tokenizer) or a list of them,
        of any lengths. Rows are ordered prompt by prompt, n_samples rows each (sharing one prefill). Row r draws
        from its own generator seeded with seed + r, so a row samples the same tokens alone or in any batch. A row
        ends before its first stop token (not included). sampling defaults to greedy. With return_attention, also
        returns per row a [L, H, T, T] float tensor (attention probabilities over its prompt + generated tokens).
        A prompt + max_new_tokens longer than the model's sequence_len is an error, unless context_shift: then a
        row whose context is full keeps its last sequence_len // 2 tokens and goes on.
        """
        requests, max_len = self._requests(prompts, max_new_tokens, sampling, seed, stop_tokens, n_samples,
                                           return_attention, context_shift)
        out: dict[tuple[int, int], list[int]] = {}
        maps: dict[tuple[int, int], list[torch.Tensor]] = {}
        which = {id(r): i for i, r in enumerate(requests)}
        for event in self._run(requests, max_len):
            key = (which[id(event.request)], event.index)
            if event.kind == "token":
                out.setdefault(key, []).append(event.token)
            elif event.kind == "done" and event.attention is not None:
                maps[key] = event.attention
            elif event.kind == "error":
                raise RuntimeError(event.error)
        keys = [(i, j) for i in range(len(requests)) for j in range(n_samples)]
        ids = [out.get(k, []) for k in keys]
        if not return_attention:
            return ids
        attention = []
        for k in keys:
            if k in maps:
                attention.append(torch.stack(maps[k]))
            else:  # max_new_tokens == 0: the prompt alone
                attention.append(torch.stack(self.attention(requests[k[0]].prompt_ids)))
        return ids, attention

    @torch.no_grad()
    def stream(
        self,
        prompt: Prompt,
        max_new_tokens: int = 64,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] = (),
        context_shift: bool = False,
    ) -> Iterator[int]:
        """Yield each new token id of ONE prompt as soon as it is sampled, until a stop token (not yielded) or
        max_new_tokens. Same tokens as generate() with the same arguments."""
        requests, max_len = self._requests(prompt, max_new_tokens, sampling, seed, stop_tokens, 1, False,
                                           context_shift)
        if len(requests) != 1:
            raise ValueError("stream() takes a single prompt; use generate() for batches")
        for event in self._run(requests, max_len):
            if event.kind == "token":
                yield event.token
            elif event.kind == "error":
                raise RuntimeError(event.error)

    def stream_text(
        self,
        prompt: Prompt,
        max_new_tokens: int = 64,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] = (),
        context_shift: bool = False,
    ) -> Iterator[str]:
        """Like stream(), but yields text pieces, never splitting a UTF-8 character (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("stream_text needs a tokenizer: Engine(model, tokenizer)")
        streamer = TextStreamer(self.tokenizer)
        for token in self.stream(prompt, max_new_tokens, sampling, seed, stop_tokens, context_shift):
            piece = streamer.push(token)
            if piece:
                yield piece
        tail = streamer.flush()
        if tail:
            yield tail

    def generate_text(
        self,
        prompt: str,
        max_new_tokens: int = 64,
        sampling: SamplingParams | None = None,
        seed: int | None = None,
        stop_tokens: Sequence[int] = (),
        n_samples: int = 1,
        context_shift: bool = False,
    ) -> list[str]:
        """Text in, one completion text per sample out (needs a tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("generate_text needs a tokenizer: Engine(model, tokenizer)")
        out = self.generate(prompt, max_new_tokens, sampling, seed, stop_tokens, n_samples,
                            context_shift=context_shift)
        return [self.tokenizer.decode(ids) for ids in out]


def _right_padded(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    ids = torch.zeros(len(rows), max(len(r) for r in rows), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
    return ids
