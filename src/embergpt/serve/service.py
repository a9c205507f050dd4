"""The served model: its tokenizer, limits, scheduler and rate limiter, and the checks every request passes.

Checks raise ApiError (400) and run before the rate limiter charges the client, so invalid requests are free.
Nothing here exposes a filesystem path: checkpoints are named by their directory's basename.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import torch
from starlette.requests import Request

from embergpt import run_dir
from embergpt.errors import TokenizerError
from embergpt.inference.batch import Request as GenerationRequest
from embergpt.inference.engine import Engine
from embergpt.inference.scheduler import Scheduler
from embergpt.sampling import SamplingParams
from embergpt.serve.api_errors import ApiError
from embergpt.serve.handoff import Generation, LoopMailbox
from embergpt.serve.prometheus import ServeStats
from embergpt.serve.rate_limit import TokenBucketLimiter, client_key
from embergpt.serve.settings import ServeSettings
from embergpt.serve.training_metrics import read_metrics

SHAPE_FIELDS = ("vocab_size", "sequence_len", "n_layer", "n_head", "n_kv_head", "n_embd")


def resolve_engine_config(settings: ServeSettings, model: torch.nn.Module) -> tuple[str, str]:
    """(compile mode, dtype name) for the served engine: the settings, "auto" from embergpt.inference.defaults."""
    from embergpt.inference.defaults import serve_defaults

    device = next(model.parameters()).device
    compile_mode, dtype = serve_defaults(device)
    if not getattr(model, "supports_kv_cache", True):
        compile_mode = "off"  # the teaching ladder runs full forwards: nothing to compile
    if settings.compile != "auto":
        compile_mode = settings.compile
    if settings.dtype != "auto":
        dtype = settings.dtype
    return compile_mode, dtype


class ModelService:
    """Everything the routes need. `close()` stops the scheduler's worker thread."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: ServeSettings | None = None,
        checkpoint_dir: str | Path | None = None,
        metadata: dict[str, Any] | None = None,
        add_bos: bool = True,
    ) -> None:
        self.started = time.monotonic()
        self.model, self.tokenizer = model.eval(), tokenizer
        self.config = model.config
        self.settings = settings or ServeSettings()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.metadata = metadata or {}
        self.add_bos = add_bos
        if tokenizer.vocab_size > self.config.vocab_size:
            raise ValueError(
                f"the tokenizer has {tokenizer.vocab_size} ids but the model only {self.config.vocab_size}; "
                "serve the tokenizer the model was trained with"
            )
        self.compile_mode, self.dtype = resolve_engine_config(self.settings, model)
        self.engine = Engine(model, tokenizer, dtype=getattr(torch, self.dtype), compile=self.compile_mode)
        # the worker compiles and warms up every decode graph before it takes a request (see `ready`)
        self.scheduler = Scheduler(self.engine, self.settings.max_batch, self.settings.max_queue,
                                   vocab_limit=tokenizer.vocab_size, warm_up=True)
        s = self.settings
        self.limiter = TokenBucketLimiter(s.rate_limit_rps, s.rate_limit_burst) if s.rate_limited else None
        self._mailboxes: dict[asyncio.AbstractEventLoop, LoopMailbox] = {}
        self.created = int(time.time())
        self.weights_sha256 = self._weights_sha256()
        self.stats = ServeStats()

    # ---- identity

    @property
    def model_id(self) -> str:
        if self.checkpoint_dir is None:
            return "embergpt"
        name, parent = self.checkpoint_dir.name, self.checkpoint_dir.parent.name
        generic = run_dir.is_checkpoint_name(name)
        return f"{parent}-{name}" if generic and parent else name

    def _weights_sha256(self) -> str | None:
        digest = (self.metadata.get("files") or {}).get("model.safetensors")
        if digest or self.checkpoint_dir is None:
            return digest
        weights = self.checkpoint_dir / "model.safetensors"
        if not weights.is_file():
            return None
        from embergpt.checkpoint import file_sha256

        return file_sha256(weights)

    def model_shape(self) -> dict[str, Any]:
        from embergpt.ladder import structure

        kind = getattr(self.model, "kind", "gpt")
        shape = {name: getattr(self.config, name) for name in SHAPE_FIELDS}
        # what the model really has (a bigram has no layers, heads or attention), for the web UI
        return {"kind": kind, **shape, "head_dim": self.config.head_dim, "structure": structure(kind, self.config)}

    def info(self) -> dict[str, Any]:
        tok, V = self.tokenizer, self.config.vocab_size
        param = next(self.model.parameters())
        match = tok.vocab_size == V
        note = (
            "the tokenizer's vocabulary matches the model's"
            if match
            else f"the model has {V - tok.vocab_size} unused ids beyond the tokenizer's {tok.vocab_size}; "
            "they are never sampled"
        )
        return {
            "model_id": self.model_id,
            "model": {
                **self.model_shape(),
                "num_params": sum(p.numel() for p in self.model.parameters()),
                "supports_kv_cache": self.scheduler.cached,
            },
            "tokenizer": {
                "kind": tok.kind,
                "vocab_size": tok.vocab_size,
                "sha256": tok.sha256,
                "chat_template": bool(getattr(tok, "chat_template", False)),
            },
            "vocab_match": match,
            "vocab_note": note,
            "chat_template": "special" if getattr(tok, "chat_template", False) else "plain",
            "checkpoint": self._checkpoint_summary(),
            "device": str(param.device),
            "dtype": str(param.dtype).removeprefix("torch."),
            "compile": self.engine.compile_mode,  # "off" if a failed warm-up fell back
            "limits": self.settings.to_dict(),
        }

    def _checkpoint_summary(self) -> dict[str, Any]:
        md = self.metadata
        return {
            "basename": self.checkpoint_dir.name if self.checkpoint_dir is not None else None,
            "sha256": self.weights_sha256,
            "step": md.get("step"),
            "created_at": md.get("created_at"),
        }

    def health(self) -> dict[str, Any]:
        ready_at = self.scheduler.ready_at
        return {
            "status": "ok" if self.ready else "warming_up",
            "ready": self.ready,
            "compile": self.engine.compile_mode,  # "off" if a failed warm-up fell back
            "dtype": self.dtype,
            # from loading the model to the first request it can take (compiling included)
            "time_to_ready_seconds": None if ready_at is None else round(ready_at - self.started, 3),
            "warmup_seconds": self.scheduler.warmup_seconds,
            "uptime_seconds": round(time.monotonic() - self.started, 3),
            "model": self.model_shape(),
            "checkpoint": {"basename": self._checkpoint_summary()["basename"], "sha256": self.weights_sha256},
            "tokenizer": {"kind": self.tokenizer.kind, "sha256": self.tokenizer.sha256},
            "scheduler": self.scheduler.stats(),
        }

    def metrics(self) -> dict[str, Any]:
        return read_metrics(self.checkpoint_dir, self.metadata)

    # ---- request checks

    def check_text_size(self, text: str) -> None:
        size = len(text.encode("utf-8"))
        limit = self.settings.max_prompt_bytes
        if size > limit:
            raise ApiError(
                400,
                "prompt_too_large",
                f"the prompt is {size} bytes; the limit is {limit} (--max-prompt-bytes)",
                max_bytes=limit,
                actual_bytes=size,
            )

    def encode(self, text: str) -> list[int]:
        """Prompt text -> ids (with <|bos|> first when add_bos), after the size check."""
        self.check_text_size(text)
        try:
            ids = self.tokenizer.encode(text)
        except (TokenizerError, ValueError, KeyError) as e:
            raise ApiError(400, "unencodable_prompt", f"the prompt cannot be encoded by this tokenizer: {e}") from None
        if self.add_bos:
            ids = [self.tokenizer.bos_id, *ids]
        if not ids:
            raise ApiError(400, "empty_prompt", "the prompt is empty; send at least one character")
        return ids

    def check_max_tokens(self, requested: int) -> int:
        limit = self.settings.max_output_tokens
        if not 1 <= requested <= limit:
            raise ApiError(
                400,
                "max_tokens_out_of_range",
                f"max_tokens must be in 1..{limit} (--max-output-tokens), got {requested}",
                max_allowed=limit,
                min_allowed=1,
                requested=requested,
            )
        return requested

    def default_max_tokens(self, prompt_len: int) -> int:
        """For OpenAI requests without max_tokens: as many as fit, up to the server's cap."""
        return max(1, min(self.settings.max_output_tokens, self.config.sequence_len - prompt_len))

    def check_context(self, prompt_len: int, max_tokens: int, return_attention: bool = False) -> None:
        seq = self.config.sequence_len
        if prompt_len + max_tokens > seq:
            raise ApiError(
                400,
                "context_length_exceeded",
                f"{prompt_len} prompt tokens + max_tokens {max_tokens} exceed the model's sequence_len {seq}; "
                f"ask for at most {max(0, seq - prompt_len)} tokens (the API answers within one context: unlike "
                "`embergpt generate`, it does not shift the context to write more)",
                prompt_tokens=prompt_len,
                max_tokens=max_tokens,
                sequence_len=seq,
                max_tokens_allowed=max(0, seq - prompt_len),
            )
        limit = self.settings.max_attention_tokens
        if return_attention and prompt_len + max_tokens > limit:
            raise ApiError(
                400,
                "attention_too_large",
                f"return_attention is limited to {limit} tokens in all (--max-attention-tokens); "
                f"this request may reach {prompt_len + max_tokens}",
                max_tokens_total=limit,
                prompt_tokens=prompt_len,
                max_tokens=max_tokens,
            )

    def sampling_params(
        self,
        temperature: float,
        top_k: int | None,
        top_p: float | None,
        min_p: float | None = None,
        repetition_penalty: float = 1.0,
    ) -> SamplingParams:
        # SamplingParams holds the one rule for every caller (a temperature below its minimum is greedy)
        try:
            return SamplingParams(temperature, top_k or None, top_p, min_p or None, repetition_penalty)
        except ValueError as e:
            raise ApiError(400, "invalid_sampling_params", str(e)) from None

    def charge(self, request: Request) -> None:
        """Take one rate-limit token for the client; 429 rate_limited when its bucket is empty."""
        if self.limiter is None:
            return
        wait = self.limiter.acquire(client_key(request.scope))  # the peer, never a header (see rate_limit.py)
        if wait > 0:
            retry = max(1, int(-(-wait // 1)))
            raise ApiError(
                429,
                "rate_limited",
                f"too many requests; retry in {wait:.2f} s",
                headers={"Retry-After": str(retry)},
                retry_after_seconds=round(wait, 3),
            )

    @property
    def has_tools(self) -> bool:
        """Whether the tokenizer has the calculator tool's tokens (then chat replies run the tool)."""
        return self.scheduler.batch.tool_ids is not None

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.decode_bytes([token_id]).decode("utf-8", errors="replace")

    def render_chat(self, messages: list[tuple[str, Any]]) -> Any:
        """(role, content) pairs -> the chat template's RenderedChat (prompt ids, stop ids and strings); 400s.
        A content is a string or an assistant's list of parts (see `embergpt.chat.template.render_chat`)."""
        from embergpt.chat.template import content_text, render_chat

        self.check_text_size("".join(content_text(content) for _, content in messages))
        try:
            return render_chat(messages, self.tokenizer, add_bos=self.add_bos)
        except TokenizerError as e:
            raise ApiError(400, "unencodable_prompt", f"a message cannot be encoded by this tokenizer: {e}") from None
        except ValueError as e:
            raise ApiError(400, "invalid_messages", str(e)) from None

    @property
    def ready(self) -> bool:
        return self.scheduler.ready.is_set()

    def generation(self, spec: GenerationRequest) -> Generation:
        """A started Generation of `spec` (to be called on the event loop serving the request)."""
        loop = asyncio.get_running_loop()
        mailbox = self._mailboxes.get(loop)
        if mailbox is None:
            mailbox = self._mailboxes[loop] = LoopMailbox(loop)
        gen = Generation(self.scheduler, self.tokenizer, spec, mailbox)
        self.stats.track(spec)  # prompt tokens and time to first token, for GET /metrics
        return gen.start()

    def close(self) -> None:
        self.scheduler.close()
