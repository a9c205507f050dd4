"""The generation engine: prefill, a small decode step, batches, N samples from one prompt, streaming, attention.

    engine = Engine(model, tokenizer)                      # optional: dtype=torch.bfloat16, compile=True
    ids = engine.generate([prompt_ids], max_new_tokens=50, sampling=SamplingParams(temperature=0.8), seed=0)
    for token in engine.stream(prompt_ids, max_new_tokens=50): ...
    for text in engine.stream_text("To be", max_new_tokens=50): print(text, end="")

How a call runs:
- The prompts are right-padded into one [B, T_pad] batch and prefilled in ONE forward pass into a static KV cache
  sized to T_pad + max_new_tokens (never more than the model's sequence_len). Each row's cached length is then set to
  its real prompt length (`set_positions`) and its first logits are taken at its last real token. The padding writes
  garbage into the cache beyond each row's length, but a query at position p only attends to keys <= p, and the
  decode steps overwrite those slots before any query can reach them.
- `n_samples` > 1 prefills each prompt once and copies the cached rows (`copy_row_`), so N samples share one prefill.
- `decode_step` feeds one token per row and returns the next logits: one model forward on [B, 1], nothing else.
  It does no host synchronization (no .item()/.tolist()), so it can be compiled and, on CUDA, captured as a CUDA graph.
- Host synchronization policy: `stream` must hand each token to Python, so it syncs once per step (one small [B]
  tensor). `generate` keeps the sampled tokens on the device and only checks "have all rows hit a stop token?"
  every `sync_every` steps (1 on CPU, where a sync costs nothing; 8 elsewhere), and never when there are no stop
  tokens; the tokens come back to the host once, at the end.
- Models with `supports_kv_cache = False` (the teaching-ladder models) are run without a cache: a full forward over
  the whole sequence at every step, giving the same tokens, only slower.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embergpt.inference.kv_cache import KVCache
from embergpt.inference.streaming import TextStreamer
from embergpt.sampling import SamplingParams, sample_next_token

Prompt = Sequence[int] | torch.Tensor | str
GREEDY = SamplingParams(temperature=0.0)
COMPILE_MODES = ("default", "max-autotune")
# inductor settings of compile="max-autotune" on CPU: the weights are frozen into the graph (prepacked), and each
# matmul's kernel is picked by timing inductor's C++ GEMM templates against aten's
CPU_MAX_AUTOTUNE = {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN",
                    # and it does so quietly: without these, every timed matmul prints a report to stderr
                    "autotune_num_choices_displayed": 0, "max_autotune_report_choices_stats": False}
WINDOW_BUCKET = 128


@dataclass
class _Rows:
    """Prompts right-padded into one batch."""

    ids: torch.Tensor  # [P, T_pad] long, padded with 0
    lengths: list[int]  # real length per prompt

    @property
    def padded_len(self) -> int:
        return self.ids.size(1)


class _StepView:
    """The cache as a compiled decode step sees it: tensors only.

    The host-side bookkeeping of KVCache (`check_capacity`, the `max_pos` int) changes every step; if the compiled
    region read it, the compiler would specialize on its value and recompile at every step. So the Engine checks the
    capacity and bumps max_pos outside, and the compiled step only reads/writes these fixed-shape tensors in place.
    """

    def __init__(self, cache: KVCache) -> None:
        self.cache = cache
        self.k, self.v, self.pos = cache.k, cache.v, cache.pos
        self.rows = torch.arange(cache.batch_size, device=cache.pos.device)
        self.layer_ids = list(torch.arange(cache.k.size(0), device=cache.pos.device))
        self.heads = torch.arange(cache.k.size(2), device=cache.pos.device)
        # Keys visible this step: no row can see past max_pos, so eager steps attend over cache[:max_pos + 1]
        # only (time then grows with the position, not with the cache size). None = the whole buffer, the fixed
        # shape a compiled step needs.
        self.window: int | None = None

    def check_capacity(self, n_new: int) -> None:
        pass  # done by Engine.decode_step before entering the compiled region

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # One index_put_ on the whole buffer (all indices tensors, no view first): a compiler can then do it in
        # place; writing through a view (k[layer][...] = ...) made inductor copy the whole buffer at every step.
        index = (self.layer_ids[layer], self.rows[:, None], self.heads[None, :], self.pos[:, None])  # -> [B, H]
        self.k.index_put_(index, k[:, :, 0].to(self.k.dtype))
        self.v.index_put_(index, v[:, :, 0].to(self.v.dtype))
        if self.window is None:
            return self.k[layer], self.v[layer]
        return self.k[layer, :, :, : self.window], self.v[layer, :, :, : self.window]

    def advance(self, n: int) -> None:
        self.pos += n


def _own_code(method: Any) -> Any:
    """A bound method with a private copy of its code object.

    torch.compile caches graphs per code object, and their guards check the engine's type, not its identity: two
    Engines in one process (say compile="default" and compile="max-autotune") would otherwise share one cache and
    the second could run the first's graph.
    """
    fn = method.__func__
    code = fn.__code__.replace(co_name=f"{fn.__name__}_{id(method.__self__):x}")
    return types.MethodType(types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__),
                            method.__self__)


class Engine:
    """Generation on top of a model with forward(idx, targets=None, kv_cache=None, return_attention=False).

    dtype: when given, the model's floating-point weights are converted to it in place (weights are stored in the
    compute dtype, so each decode step reads half the bytes in bf16); buffers such as the RoPE tables keep theirs.
    compile: compile the decode step with torch.compile. False = eager; True or "default" = inductor's default
    (on CUDA: mode="reduce-overhead", i.e. CUDA graphs); "max-autotune" = benchmark GEMM kernels at compile time
    and pick the fastest (CPU: inductor's C++ GEMM templates with the weights frozen and prepacked into the compiled
    step, which is what makes bf16 decode fast on CPUs without AMX; CUDA: mode="max-autotune"). max-autotune
    compiles for much longer (a minute or more on 2 cores) and, on CPU, freezes the weights: build a new Engine after
    changing them.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any = None,
        dtype: torch.dtype | None = None,
        compile: bool | str = False,
    ) -> None:
        if compile is True:
            compile = "default"
        if compile and compile not in COMPILE_MODES:
            raise ValueError(f"compile must be False, True or one of {', '.join(COMPILE_MODES)}; got {compile!r}")
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
        self.compile_mode: str | None = compile if compile and self.supports_kv_cache else None
        self.sync_every = 1 if self.device.type == "cpu" else 8
        self._view: _StepView | None = None
        self._compiled_step: Any = None

    @property
    def compile(self) -> bool:
        return self.compile_mode is not None

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

    def _rows(self, prompts: Prompt | Sequence[Prompt]) -> _Rows:
        """One prompt (ids, 1-D tensor or text) or a sequence of them -> a right-padded batch."""
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
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
        return _Rows(ids.to(self.device), [len(r) for r in rows])

    def _check_length(self, padded_len: int, max_new_tokens: int) -> None:
        if max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if self.sequence_len is not None and padded_len + max_new_tokens > self.sequence_len:
            raise ValueError(
                f"prompt ({padded_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"sequence_len={self.sequence_len}; shorten the prompt or ask for fewer tokens"
            )

    def _cache_len(self, padded_len: int, max_new_tokens: int) -> int:
        n = padded_len + max(max_new_tokens, 1)
        if self.compile:  # round up so that nearby lengths share one compiled graph
            n = -(-n // 64) * 64
        return min(n, self.sequence_len) if self.sequence_len is not None else n

    @torch.no_grad()
    def prefill(
        self,
        ids: torch.Tensor | Sequence[Sequence[int]],
        lengths: Sequence[int] | None = None,
        cache: KVCache | None = None,
        max_new_tokens: int | None = None,
        return_attention: bool = False,
    ) -> tuple[torch.Tensor, KVCache] | tuple[torch.Tensor, KVCache, list[torch.Tensor]]:
        """Run the prompts [B, T] (right-padded; `lengths` per row, default all T) through the model in one pass.

        Fills `cache` (default: a new one sized to T + max_new_tokens, or to sequence_len) and sets each row's
        position to its length. Returns (logits [B, V] at each row's last real token, cache), plus the attention
        (a list per layer of [B, H, T, T_cache]) when return_attention.
        """
        if not isinstance(ids, torch.Tensor):
            rows = self._rows(list(ids))
            ids, lengths = rows.ids, lengths or rows.lengths
        ids = ids.to(self.device)
        B, T = ids.shape
        lengths = list(lengths) if lengths is not None else [T] * B
        if cache is None:
            max_len = None if max_new_tokens is None else self._cache_len(T, max_new_tokens)
            cache = self.new_cache(B, max_len)
        out = self.model(ids, kv_cache=cache, return_attention=return_attention)
        logits, attention = out if return_attention else (out, None)
        cache.set_positions(lengths)
        last = torch.tensor(lengths, device=self.device) - 1
        logits = logits[torch.arange(B, device=self.device), last]
        return (logits, cache, attention) if return_attention else (logits, cache)

    def _forward_step(self, tokens: torch.Tensor, view: _StepView) -> torch.Tensor:
        return self.model(tokens[:, None], kv_cache=view)[:, -1]

    def _step_fn(self) -> Any:
        if not self.compile:
            return self._forward_step
        if self._compiled_step is None:
            mode = None
            if self.device.type == "cuda":
                mode = "max-autotune" if self.compile_mode == "max-autotune" else "reduce-overhead"
            # one graph per (batch, cache length, window): lengths are bucketed, so a few graphs cover a session
            compiled = torch.compile(_own_code(self._forward_step), mode=mode, dynamic=False, fullgraph=True,
                                     recompile_limit=64)
            self._compiled_step = compiled
            if self.compile_mode == "max-autotune" and self.device.type == "cpu":
                import torch._inductor.config as inductor_config

                settings = {k: v for k, v in CPU_MAX_AUTOTUNE.items() if hasattr(inductor_config, k)}  # torch >= 2.4
                compiled_shapes: set[tuple[int, int, int | None]] = set()

                # The settings must hold while dynamo traces and inductor compiles, i.e. inside the call that meets a
                # new (batch, cache length, window): passed as torch.compile(options=...), `freezing` is not applied
                # and the step falls back to aten matmuls. Patching the config costs ~40 us, so only those calls do.
                def step(tokens: torch.Tensor, view: _StepView) -> torch.Tensor:
                    shape = (tokens.size(0), view.k.size(3), view.window)
                    if shape in compiled_shapes:
                        return compiled(tokens, view)
                    with torch._inductor.config.patch(settings):
                        logits = compiled(tokens, view)
                    compiled_shapes.add(shape)
                    return logits

                self._compiled_step = step
        return self._compiled_step

    def _view_of(self, cache: KVCache) -> _StepView:
        if self._view is None or self._view.cache is not cache:
            self._view = _StepView(cache)
            if self.compile and self.device.type == "cuda":
                # CUDA graphs may only mutate inputs at fixed addresses: declare the cache buffers static
                for t in (cache.k, cache.v, cache.pos):
                    torch._dynamo.mark_static_address(t)
        return self._view

    def attended_positions(self, max_pos: int, cache_len: int) -> int:
        """How many cache positions a decode step attends over when rows have cached at most max_pos tokens."""
        if not self.compile:
            return max_pos + 1
        if self.device.type == "cuda":
            return cache_len  # one CUDA graph per cache shape
        # compiled on CPU: a few fixed windows (multiples of WINDOW_BUCKET), one graph each, so that a large batch
        # early in a long cache does not read the whole cache at every step
        return min(cache_len, -(-(max_pos + 1) // WINDOW_BUCKET) * WINDOW_BUCKET)

    def _window(self, cache: KVCache) -> int | None:
        n = self.attended_positions(cache.max_pos, cache.max_len)
        return None if n == cache.max_len else n

    @torch.no_grad()
    def decode_step(self, tokens: torch.Tensor, cache: KVCache, return_attention: bool = False) -> Any:
        """The hot path: feed tokens [B] (one per row, at each row's position) -> next logits [B, V] (fp32).

        With return_attention, returns (logits, attention: list per layer of [B, H, 1, T_cache]) via the explicit
        (uncompiled) attention path.
        """
        cache.check_capacity(1)  # host-side, no device sync
        if return_attention:
            logits, attention = self.model(tokens[:, None], kv_cache=cache, return_attention=True)
            return logits[:, -1], attention
        view = self._view_of(cache)
        view.window = self._window(cache)
        logits = self._step_fn()(tokens, view)
        cache.max_pos += 1  # the view advanced `pos` on the device; keep the host-side bound in step
        return logits

    # ------------------------------------------------------------------ the decode loop

    def _steps(
        self,
        rows: _Rows,
        max_new_tokens: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
        n_samples: int,
        attention: list | None,
        context_shift: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Yield the sampled tokens [B] (B = prompts x n_samples) at each step, max_new_tokens times.

        When `attention` is a list, the prefill's and every decode step's attention maps are appended to it, and
        one extra step runs at the end so that the last token's attention row exists too.

        context_shift: instead of refusing a request longer than the model's sequence_len, generate in rounds:
        when the batch's longest row fills the context, every row keeps its last sequence_len // 2 tokens,
        which are prefilled into a fresh cache, and generation goes on from there.
        """
        shift = context_shift and self.sequence_len is not None and attention is None
        self._check_length(rows.padded_len, min(1, max_new_tokens) if shift else max_new_tokens)
        capture = attention is not None and self.supports_kv_cache  # uncached models: full forward at the end
        base_len = rows.padded_len  # of the original prompts: where the repetition history's new tokens begin

        def start(rows: _Rows, remaining: int, n_samples: int) -> tuple[Callable, Callable, int]:
            n_round = min(remaining, self.sequence_len - rows.padded_len) if shift else remaining
            if self.supports_kv_cache:
                first, step = self._cached_runner(rows, n_round, n_samples, attention)
            else:
                first, step = self._uncached_runner(rows, n_round, n_samples)
            return first, step, n_round

        first, step, n_round = start(rows, max_new_tokens, n_samples)
        logits = first()
        B = logits.size(0)
        history = None
        if sampling.repetition_penalty != 1.0:  # prompt + generated ids; order is irrelevant, -1 = nothing
            lengths = torch.tensor(rows.lengths, device=self.device)
            padding = torch.arange(base_len, device=self.device)[None] >= lengths[:, None]
            prompt = rows.ids.masked_fill(padding, -1).repeat_interleave(n_samples, 0)
            history = torch.cat([prompt, torch.full((B, max_new_tokens), -1, device=self.device)], 1)
        this_round: list[torch.Tensor] = []  # tokens sampled since the last prefill
        for i in range(max_new_tokens):
            prev = None if history is None else history[:, : base_len + i]
            tokens = sample_next_token(logits, sampling, generator, prev)
            if history is not None:
                history[:, base_len + i] = tokens
            yield tokens
            if i + 1 == max_new_tokens and not capture:
                break
            if shift:
                this_round.append(tokens)
            if not shift or len(this_round) < n_round:
                logits = step(tokens)
                continue
            # the context is full: keep each row's last sequence_len // 2 tokens and prefill them
            rows = self._shifted(rows, n_samples, torch.stack(this_round, 1), self.sequence_len // 2)
            n_samples, this_round = 1, []
            first, step, n_round = start(rows, max_new_tokens - i - 1, 1)
            logits = first()

    def _shifted(self, rows: _Rows, n_samples: int, new: torch.Tensor, keep: int) -> _Rows:
        """Each row's context (its prompt row + the new tokens [B, n]) cut to its last `keep` tokens."""
        prompts = rows.ids.tolist()  # host syncs, once per shift
        contexts = []
        for b, generated in enumerate(new.tolist()):
            p = b // n_samples
            contexts.append((prompts[p][: rows.lengths[p]] + generated)[-keep:])
        return self._rows(contexts)

    def _cached_runner(self, rows: _Rows, max_new_tokens: int, n_samples: int, attention: list | None) -> tuple:
        P = len(rows.lengths)
        max_len = self._cache_len(rows.padded_len, max_new_tokens)
        capture = attention is not None
        if n_samples == 1:
            cache = self.new_cache(P, max_len)
        else:
            cache = self.new_cache(P * n_samples, max_len)
            prompt_cache = self.new_cache(P, max_len)

        def first() -> torch.Tensor:
            if n_samples == 1:
                out = self.prefill(rows.ids, rows.lengths, cache, return_attention=capture)
            else:
                out = self.prefill(rows.ids, rows.lengths, prompt_cache, return_attention=capture)
                for r in range(P * n_samples):  # every sample of prompt p starts from p's single prefill
                    cache.copy_row_(r, prompt_cache, r // n_samples)
            if capture:
                attention.append([a.repeat_interleave(n_samples, 0) for a in out[2]])
            return out[0].repeat_interleave(n_samples, 0) if n_samples > 1 else out[0]

        def step(tokens: torch.Tensor) -> torch.Tensor:
            if not capture:
                return self.decode_step(tokens, cache)
            logits, att = self.decode_step(tokens, cache, return_attention=True)
            attention.append(att)
            return logits

        return first, step

    def _uncached_runner(self, rows: _Rows, max_new_tokens: int, n_samples: int) -> tuple:
        """Full forward over the whole (growing) sequence at each step, for models without a KV cache."""
        seq = torch.cat(
            [rows.ids, torch.zeros(rows.ids.size(0), max_new_tokens, dtype=torch.long, device=self.device)], 1
        ).repeat_interleave(n_samples, 0)
        B = seq.size(0)
        arange = torch.arange(B, device=self.device)
        lengths = torch.tensor(rows.lengths, device=self.device).repeat_interleave(n_samples)
        state = {"n": 0}  # tokens generated so far

        @torch.no_grad()
        def first() -> torch.Tensor:
            return self.model(seq[:, : rows.padded_len])[arange, lengths - 1]

        @torch.no_grad()
        def step(tokens: torch.Tensor) -> torch.Tensor:
            at = lengths + state["n"]
            seq[arange, at] = tokens
            state["n"] += 1
            # causal model: the padding after a shorter row's tokens cannot influence its logits
            return self.model(seq[:, : rows.padded_len + state["n"]])[arange, at]

        return first, step

    # ------------------------------------------------------------------ public generation API

    def _generator(self, seed: int | None) -> torch.Generator | None:
        if seed is not None and not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
        return None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

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
        of any lengths. Rows are ordered prompt by prompt, n_samples rows each. A row ends before its first stop
        token (which is not included). sampling defaults to greedy. With return_attention, also returns per row a
        [L, H, T, T] float tensor (lower-triangular attention probabilities over its prompt + generated tokens).
        A prompt + max_new_tokens longer than the model's sequence_len is an error, unless context_shift: then
        generation goes on in rounds, and whenever the longest row fills the context, every row keeps its last
        sequence_len // 2 tokens (rows of a batch shift together; not with return_attention).
        """
        if n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        rows = self._rows(prompts)
        sampling = sampling or GREEDY
        generator = self._generator(seed)
        stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=self.device)
        B = len(rows.lengths) * n_samples
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        attention: list | None = [] if return_attention else None
        sampled: list[torch.Tensor] = []
        if return_attention and context_shift:
            raise ValueError("return_attention and context_shift cannot be combined: the maps cover one context")
        steps = self._steps(rows, max_new_tokens, sampling, generator, n_samples, attention, context_shift)
        for i, tokens in enumerate(steps):
            sampled.append(tokens)
            if stops.numel():
                done |= torch.isin(tokens, stops)
                if (i + 1) % self.sync_every == 0 and bool(done.all()):
                    break
        out = self._trim(sampled, B, set(stop_tokens))
        if not return_attention:
            return out
        lengths = [n for n in rows.lengths for _ in range(n_samples)]
        if self.supports_kv_cache:
            maps = self._assemble_attention(attention, lengths, [len(o) for o in out])
        else:
            maps = self._full_attention(rows, out, n_samples)
        return out, maps

    @staticmethod
    def _trim(sampled: list[torch.Tensor], B: int, stops: set[int]) -> list[list[int]]:
        if not sampled:
            return [[] for _ in range(B)]
        table = torch.stack(sampled, 1).tolist()  # the one host transfer of the whole call
        out = []
        for row in table:
            end = next((j for j, t in enumerate(row) if t in stops), len(row))
            out.append(row[:end])
        return out

    @staticmethod
    def _assemble_attention(steps: list, lengths: list[int], generated: list[int]) -> list[torch.Tensor]:
        """Cached attention pieces -> per row [L, H, T, T] with T = prompt + generated tokens."""
        prefill = torch.stack([a.float().cpu() for a in steps[0]])  # [L, B, H, T_pad, T_cache]
        decode = [torch.stack([a[:, :, 0].float().cpu() for a in s]) for s in steps[1:]]  # each [L, B, H, T_cache]
        maps = []
        for b, (n, m) in enumerate(zip(lengths, generated)):
            T = n + m
            A = torch.zeros(prefill.size(0), prefill.size(2), T, T)
            A[:, :, :n, :n] = prefill[:, b, :, :n, :n]
            for i in range(m):
                A[:, :, n + i, : n + i + 1] = decode[i][:, b, :, : n + i + 1]
            maps.append(A)
        return maps

    def _full_attention(self, rows: _Rows, out: list[list[int]], n_samples: int) -> list[torch.Tensor]:
        maps = []
        for b, gen in enumerate(out):
            p = b // n_samples
            ids = rows.ids[p, : rows.lengths[p]].tolist() + gen
            _, att = self.model(torch.tensor([ids], device=self.device), return_attention=True)
            maps.append(torch.stack([a[0].float().cpu() for a in att]))
        return maps

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
        """Yield each new token id of ONE prompt as soon as it is sampled (one host sync per step), until a stop
        token (not yielded) or max_new_tokens. Same tokens as generate() with the same arguments."""
        rows = self._rows(prompt)
        if len(rows.lengths) != 1:
            raise ValueError("stream() takes a single prompt; use generate() for batches")
        stops = set(stop_tokens)
        steps = self._steps(rows, max_new_tokens, sampling or GREEDY, self._generator(seed), 1, None, context_shift)
        for tokens in steps:
            token = int(tokens[0])
            if token in stops:
                return
            yield token

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


def generate_from_checkpoint(
    checkpoint: str | Path,
    prompt: str,
    max_new_tokens: int | None = None,
    sampling: SamplingParams | None = None,
    seed: int | None = None,
    n_samples: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    compile: bool | str = False,
    on_text: Callable[[str], None] | None = None,
    context_shift: bool = True,
) -> list[str]:
    """Load a checkpoint and continue `prompt`: what `embergpt generate` does. Returns one text per sample.

    max_new_tokens defaults to 256. Output longer than the model's context is generated in rounds (context_shift,
    see Engine.generate; with context_shift=False it is an error, and the default is what fits, at most 256). A
    sample ends early when the model emits the BOS token (the start of a new document). With on_text and
    n_samples == 1, each piece of text is passed to on_text as soon as it is complete (never half a UTF-8
    character); with n_samples > 1 the samples are generated as one batch sharing one prefill, and on_text receives
    each whole sample.
    Raises CheckpointError / DeviceError / TokenizerError / ValueError with a one-line message.
    """
    from embergpt.checkpoint import load_checkpoint
    from embergpt.device import resolve_device, resolve_dtype
    from embergpt.errors import CheckpointError

    target = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, target)
    # load in fp32 and let the Engine convert only the weights: the RoPE tables stay fp32
    model, config, _, tokenizer = load_checkpoint(checkpoint, device=target)
    if tokenizer is None:
        raise CheckpointError(f"{checkpoint}: the checkpoint has no tokenizer.json, so a text prompt cannot be encoded")
    engine = Engine(model, tokenizer, dtype=compute_dtype, compile=compile)
    ids = engine.encode(prompt)
    room = config.sequence_len - len(ids)
    if room <= 0:
        raise ValueError(f"the prompt is {len(ids)} tokens; the model's context is {config.sequence_len}: "
                         f"shorten the prompt to at most {config.sequence_len - 1} tokens so that new ones fit")
    if max_new_tokens is None:
        max_new_tokens = 256 if context_shift else min(256, room)
    stops = [tokenizer.bos_id]
    if n_samples == 1 and on_text is not None:
        pieces = []
        for piece in engine.stream_text(ids, max_new_tokens, sampling, seed, stops, context_shift):
            pieces.append(piece)
            on_text(piece)
        return ["".join(pieces)]
    out = engine.generate(ids, max_new_tokens, sampling, seed, stops, n_samples, context_shift=context_shift)
    texts = [tokenizer.decode(t) for t in out]
    if on_text is not None:
        for text in texts:
            on_text(text)
    return texts
