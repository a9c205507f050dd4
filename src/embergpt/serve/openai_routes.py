"""The OpenAI-compatible routes, answered by the same decode core as /api; `stream: true` answers with server-sent
events ending in `data: [DONE]`.

    GET  /v1/models, /v1/models/{id}
    POST /v1/completions        prompt: a string, strings, token ids or lists of ids; n, echo, logprobs, stop, seed
    POST /v1/chat/completions   messages; n, logprobs + top_logprobs, stop, seed
    POST /tokenize, /detokenize, GET /tokenizer_info   (as vLLM has them: lm-evaluation-harness uses them)
    GET  /metrics               Prometheus text (see prometheus.py)

Everything OpenAI defines that we do not implement is refused with 400 unsupported_parameter (schemas.py), and
errors take OpenAI's shape (api_errors.py). A `model` other than the served one is 404 model_not_found unless the
server runs with --accept-any-model.
"""

from __future__ import annotations

import asyncio
import codecs
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response

from embergpt.errors import TokenizerError
from embergpt.inference.batch import Request as GenerationSpec
from embergpt.serve import prometheus
from embergpt.serve.api_errors import ApiError, SafeJSONResponse
from embergpt.serve.handoff import (
    ClientDisconnected,
    Finish,
    Generation,
    PromptPiece,
    Result,
    TokenPiece,
    wait_for_disconnect,
)
from embergpt.serve.respond import ERRORS, stop_strings
from embergpt.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    OpenAIErrorResponseModel,
    TokenizeRequest,
    usage,
)
from embergpt.serve.service import ModelService
from embergpt.serve.sse import DONE, EventStreamResponse, sse_event

OPENAI_COMPLETION_DEFAULT_MAX_TOKENS = 16  # as OpenAI's /v1/completions
MAX_PROMPTS = 64  # prompts in one /v1/completions request
MAX_CHOICES = 64  # prompts x n: one request (one rate-limit token) may not occupy the batch for long
MIN_LOGPROB = -9999.0  # what a -inf log-probability is reported as (JSON has no infinity)
OPENAI_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {**entry, "model": OpenAIErrorResponseModel} for code, entry in ERRORS.items() if code != 422
} | {404: {"model": OpenAIErrorResponseModel, "description": "model_not_found"}}  # /v1: a schema error is a 400
SSE_RESPONSES: dict[int | str, dict[str, Any]] = {200: {"content": {"text/event-stream": {}}}, **OPENAI_ERRORS}


def add_openai_routes(app: FastAPI, service: ModelService) -> None:
    def model_card() -> dict[str, Any]:
        return {"id": service.model_id, "object": "model", "created": service.created, "owned_by": "embergpt",
                "max_model_len": service.config.sequence_len}

    @app.get("/v1/models", summary="The served model (OpenAI-compatible)")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", summary="One model (OpenAI-compatible)", responses=OPENAI_ERRORS)
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != service.model_id:
            raise ApiError(404, "model_not_found", f"no model {model_id!r}; this server has {service.model_id!r}",
                           param="model")
        return model_card()

    @app.post("/v1/completions", responses=SSE_RESPONSES, summary="Text completion (OpenAI-compatible)")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        _check_request(service, req)
        prompts = _completion_prompts(service, req.prompt)
        requested = req.max_tokens if req.max_tokens is not None else OPENAI_COMPLETION_DEFAULT_MAX_TOKENS
        max_tokens = _check_max_tokens(service, requested)
        n = _check_n(service, req.n)
        if len(prompts) * n > MAX_CHOICES:
            raise ApiError(400, "too_many_choices", f"{len(prompts)} prompts x n={n} exceed {MAX_CHOICES} choices per "
                           "request; split the request", param="n", max_allowed=MAX_CHOICES)
        params = _sampling(service, req)
        stops = stop_strings(req.stop)
        k = req.logprobs
        specs = []
        for ids, _ in prompts:
            service.check_context(len(ids), max(max_tokens, 1))
            # max_tokens 0 (lm-eval's loglikelihood with echo) generates one token and drops it: the prefill that
            # computes the prompt's logprobs is the one that samples the first token
            specs.append(GenerationSpec(
                ids, max(max_tokens, 1), params, req.seed, frozenset({service.tokenizer.bos_id}), stops, n=n,
                logprobs=k, prompt_logprobs=k if req.echo and k is not None else None,
            ))  # fmt: skip
        view = _CompletionView(service, req, prompts, n, max_tokens == 0)
        return await _answer(service, request, specs, req.stream, view.stream, view.body)

    @app.post("/v1/chat/completions", responses=SSE_RESPONSES, summary="Chat completion (OpenAI-compatible)")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        _check_request(service, req)
        if req.top_logprobs is not None and not req.logprobs:
            raise ApiError(400, "invalid_request", "top_logprobs needs logprobs: true", param="top_logprobs")
        rendered = service.render_chat([("system" if m.role == "developer" else m.role, m.text())
                                        for m in req.messages])
        ids = rendered.ids
        requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
        if requested is None:
            requested = service.default_max_tokens(len(ids))
        max_tokens = _check_max_tokens(service, requested)
        n = _check_n(service, req.n)
        service.check_context(len(ids), max(max_tokens, 1))
        spec = GenerationSpec(
            ids, max(max_tokens, 1), _sampling(service, req), req.seed, rendered.stop_ids,
            rendered.stop_strings + stop_strings(req.stop), n=n,
            logprobs=(req.top_logprobs or 0) if req.logprobs else None, tools=service.has_tools,
        )  # fmt: skip
        view = _ChatView(service, req, n, max_tokens == 0)
        return await _answer(service, request, [spec], req.stream, view.stream, view.body)

    # ---- vLLM's tokenizer endpoints

    @app.post("/tokenize", summary="Text or chat messages -> token ids (as vLLM's)", responses=OPENAI_ERRORS)
    async def tokenize(req: TokenizeRequest) -> dict[str, Any]:
        _check_model(service, req.model)
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(400, "invalid_request", "give exactly one of prompt and messages", param="prompt")
        if req.messages is not None:
            ids = service.render_chat([("system" if m.role == "developer" else m.role, m.text())
                                       for m in req.messages]).ids
        else:
            service.check_text_size(req.prompt)
            try:  # special tokens by name, as Hugging Face tokenizers do (lm-eval encodes the eos_token's name)
                ids = service.tokenizer.encode(req.prompt, allow_special=True)
            except (TokenizerError, ValueError, KeyError) as e:
                raise ApiError(400, "unencodable_prompt", f"the prompt cannot be encoded: {e}",
                               param="prompt") from None
            if req.add_special_tokens:
                ids = [service.tokenizer.bos_id, *ids]
        out: dict[str, Any] = {"count": len(ids), "max_model_len": service.config.sequence_len, "tokens": ids,
                               "token_strs": None}
        if req.return_token_strs:
            out["token_strs"] = [_token_str(service, i) for i in ids]
        return out

    @app.post("/detokenize", summary="Token ids -> text (as vLLM's)", responses=OPENAI_ERRORS)
    async def detokenize(req: DetokenizeRequest) -> dict[str, Any]:
        _check_model(service, req.model)
        _check_ids(service, req.tokens, "tokens")
        return {"prompt": service.tokenizer.decode(req.tokens)}

    @app.get("/tokenizer_info", summary="The tokenizer's special tokens and limits (as vLLM's)")
    async def tokenizer_info() -> dict[str, Any]:
        from embergpt.tokenizer.base import BOS

        tok = service.tokenizer
        return {
            "tokenizer_class": type(tok).__name__,
            "kind": tok.kind,
            "vocab_size": tok.vocab_size,
            # <|bos|> begins every document, so it also ends the one before: our end-of-text token
            "bos_token": BOS,
            "eos_token": BOS,
            "pad_token": None,
            "unk_token": None,
            "added_tokens": tok.special_tokens,
            "model_max_length": service.config.sequence_len,
            "chat_template": None,  # ours is code (embergpt.chat.template), not a Jinja template
        }

    @app.get("/metrics", summary="Serving metrics in Prometheus' text format", response_class=PlainTextResponse)
    async def metrics() -> Response:
        text = prometheus.render(service.stats, service.scheduler.stats())
        return PlainTextResponse(text, media_type=prometheus.CONTENT_TYPE)


# ---------------------------------------------------------------------------------------------- request checks


def _check_model(service: ModelService, model: str | None) -> None:
    if model is not None and model != service.model_id and not service.settings.accept_any_model:
        raise ApiError(404, "model_not_found",
                       f"the model {model!r} is not served here; use {service.model_id!r} (GET /v1/models), or "
                       "start the server with --accept-any-model", param="model")


def _check_request(service: ModelService, req: CompletionRequest | ChatCompletionRequest) -> None:
    _check_model(service, req.model)
    name = req.unsupported()
    if name is not None:
        raise ApiError(400, "unsupported_parameter",
                       f"{name}={getattr(req, name)!r} is not supported by this server; leave it out", param=name)


def _check_max_tokens(service: ModelService, requested: int) -> int:
    limit = service.settings.max_output_tokens
    if not 0 <= requested <= limit:
        raise ApiError(400, "max_tokens_out_of_range",
                       f"max_tokens must be in 0..{limit} (--max-output-tokens), got {requested}",
                       param="max_tokens", max_allowed=limit, min_allowed=0, requested=requested)
    return requested


def _check_n(service: ModelService, n: int) -> int:
    rows = service.settings.max_batch
    if n > rows:
        raise ApiError(400, "n_out_of_range", f"n must be in 1..{rows} (the server's --max-batch), got {n}",
                       param="n", max_allowed=rows, requested=n)
    return n


def _check_ids(service: ModelService, ids: list[int], param: str) -> None:
    vocab = service.tokenizer.vocab_size
    bad = next((i for i in ids if not 0 <= i < vocab), None)
    if bad is not None:
        raise ApiError(400, "token_id_out_of_range", f"token id {bad} is not in 0..{vocab - 1} (the vocabulary)",
                       param=param, vocab_size=vocab, token_id=bad)


def _completion_prompts(service: ModelService, prompt: Any) -> list[tuple[list[int], bool]]:
    """Each prompt's ids, and whether the server added <|bos|> (a text prompt) or not (token ids, sent as is)."""
    if isinstance(prompt, str):
        return [(service.encode(prompt), service.add_bos)]
    if not prompt:
        raise ApiError(400, "empty_prompt", "prompt is an empty list; send at least one prompt", param="prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    if len(prompt) > MAX_PROMPTS:
        raise ApiError(400, "too_many_prompts", f"at most {MAX_PROMPTS} prompts per request, got {len(prompt)}",
                       param="prompt", max_allowed=MAX_PROMPTS)
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append((service.encode(p), service.add_bos))
            continue
        if not p:
            raise ApiError(400, "empty_prompt", "a prompt of token ids is empty; send at least one id", param="prompt")
        _check_ids(service, p, "prompt")
        out.append((list(p), False))
    return out


def _sampling(service: ModelService, req: CompletionRequest | ChatCompletionRequest) -> Any:
    return service.sampling_params(req.temperature, req.top_k, req.top_p, req.min_p, req.repetition_penalty)


# ---------------------------------------------------------------------------------------------- running


async def _answer(
    service: ModelService,
    request: Request,
    specs: list[GenerationSpec],
    stream: bool,
    events: Callable[[list[Generation]], AsyncIterator[str]],
    body: Callable[[list[Result]], dict[str, Any]],
) -> Response:
    """Charge the rate limit once, start a generation per prompt, answer with SSE or, once all are done, JSON."""
    service.charge(request)
    gens: list[Generation] = []
    try:
        for spec in specs:
            gens.append(service.generation(spec))
    except ApiError:
        for gen in gens:
            gen.request.cancel()
        raise
    if stream:
        return EventStreamResponse(events(gens))
    try:
        results = await _collect_all(gens, request)
    except ClientDisconnected:
        return SafeJSONResponse({"error": "client_disconnected"}, status_code=499)
    return SafeJSONResponse(body(results))


async def _collect_all(gens: list[Generation], request: Request) -> list[Result]:
    task = asyncio.ensure_future(asyncio.gather(*(gen.collect() for gen in gens)))
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        try:
            return task.result()
        except BaseException:
            for gen in gens:
                gen.request.cancel()
            raise
    task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no "never retrieved" warning
    task.cancel()
    for gen in gens:
        gen.request.cancel()
    raise ClientDisconnected()


async def _merged(gens: list[Generation]) -> AsyncIterator[tuple[int, list[PromptPiece | TokenPiece | Finish]]]:
    """(prompt number, batch of pieces) from every generation as they come; leaving early cancels them all."""
    if len(gens) == 1:
        async for batch in gens[0].pieces():
            yield 0, batch
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(p: int, gen: Generation) -> None:
        try:
            async for batch in gen.pieces():
                queue.put_nowait((p, batch))
            queue.put_nowait((p, None))
        except ApiError as e:
            queue.put_nowait((p, e))

    tasks = [asyncio.ensure_future(pump(p, gen)) for p, gen in enumerate(gens)]
    try:
        open_gens = len(gens)
        while open_gens:
            p, item = await queue.get()
            if isinstance(item, ApiError):
                raise item
            if item is None:
                open_gens -= 1
                continue
            yield p, item
    finally:
        for task in tasks:
            task.cancel()
        for gen in gens:
            if not gen.finished:
                gen.request.cancel()


# ---------------------------------------------------------------------------------------------- logprobs


def _token_str(service: ModelService, token_id: int) -> str:
    if token_id >= service.tokenizer.vocab_size:  # a model id past the tokenizer's (never sampled)
        return f"<|id {token_id}|>"
    return service.token_text(token_id)


def _token_bytes(service: ModelService, token_id: int) -> bytes:
    if token_id >= service.tokenizer.vocab_size:
        return b""
    return service.tokenizer.decode_bytes([token_id])


def _finite(logprob: float | None) -> float | None:
    if logprob is None:
        return None
    return logprob if math.isfinite(logprob) else MIN_LOGPROB


class _Offsets:
    """Character offsets of tokens in a choice's text, decoding their bytes incrementally (a token may end inside
    a UTF-8 character: the character counts where it completes)."""

    def __init__(self, start: int = 0) -> None:
        self.offset = start
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, data: bytes) -> tuple[int, str]:
        """(this token's offset, the text it completes)."""
        at = self.offset
        text = self._decoder.decode(data)
        self.offset += len(text)
        return at, text


class _CompletionLogprobs:
    """The `logprobs` object of one completion choice, built token by token: tokens, token_logprobs, top_logprobs
    ({token text: logprob}: the k most likely, and the chosen token) and text_offset."""

    def __init__(self, service: ModelService, offsets: _Offsets) -> None:
        self.service, self.offsets = service, offsets
        self.clear()

    def clear(self) -> None:
        self.data: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def add(self, token_id: int, logprob: float | None, top: list[tuple[int, float]] | None, text: bool = True,
            first: bool = False) -> str:
        """Add one token (`text`: whether it is part of the choice's text); returns the text it completes."""
        s = self.service
        at, completed = self.offsets.push(_token_bytes(s, token_id) if text else b"")
        self.data["tokens"].append(_token_str(s, token_id))
        self.data["token_logprobs"].append(_finite(logprob))
        if first:
            alternatives = None  # the first prompt token has nothing before it
        else:
            alternatives = {_token_str(s, i): _finite(lp) for i, lp in top or []}
            alternatives.setdefault(_token_str(s, token_id), _finite(logprob))
        self.data["top_logprobs"].append(alternatives)
        self.data["text_offset"].append(at)
        return completed

    def take(self) -> dict[str, list[Any]]:
        """What was added since the last take (a streamed chunk's logprobs)."""
        out = self.data
        self.clear()
        return out


class _CompletionChoice:
    """One choice's running state: its echo, its logprobs and offsets."""

    def __init__(self, service: ModelService, ids: list[int], bos_added: bool, echo: bool, k: int | None) -> None:
        self.service, self.ids, self.bos_added, self.echo, self.k = service, ids, bos_added, echo, k
        self.offsets = _Offsets()
        self.logprobs = _CompletionLogprobs(service, self.offsets) if k is not None else None
        self.echo_text = ""

    def prompt(self, prompt_logprobs: list[tuple[float | None, list[tuple[int, float]]]] | None) -> str:
        """The echoed prompt's text (the server's own <|bos|> is not text), adding its logprobs."""
        parts = []
        for i, token_id in enumerate(self.ids):
            is_text = not (i == 0 and self.bos_added)
            if self.logprobs is not None and prompt_logprobs is not None:
                lp, top = prompt_logprobs[i]
                parts.append(self.logprobs.add(token_id, lp, top, text=is_text, first=i == 0))
            elif is_text:
                parts.append(self.offsets.push(_token_bytes(self.service, token_id))[1])
        self.echo_text = "".join(parts)
        return self.echo_text

    def token(self, piece: TokenPiece) -> None:
        if self.logprobs is not None:
            self.logprobs.add(piece.id, piece.logprob, piece.top_logprobs)
        else:
            self.offsets.push(_token_bytes(self.service, piece.id))

    def stop_token(self, piece: TokenPiece | None) -> None:
        if piece is not None and self.logprobs is not None:
            self.logprobs.add(piece.id, piece.logprob, piece.top_logprobs, text=False)


class _CompletionView:
    """The completion object (or its stream of chunks) of a /v1/completions request."""

    def __init__(self, service: ModelService, req: CompletionRequest, prompts: list[tuple[list[int], bool]], n: int,
                 drop_output: bool) -> None:
        self.service, self.req, self.prompts, self.n, self.drop = service, req, prompts, n, drop_output
        self.rid, self.created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.choices = [_CompletionChoice(service, ids, bos, req.echo, req.logprobs)
                        for ids, bos in prompts for _ in range(n)]

    def _envelope(self, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.rid, "object": "text_completion", "created": self.created,
                "model": self.service.model_id, "choices": choices, **extra}

    def _usage(self, finishes: list[Finish | None]) -> dict[str, Any]:
        prompt_tokens = sum(len(ids) for ids, _ in self.prompts)
        completion = 0 if self.drop else sum(f.completion_tokens for f in finishes if f is not None)
        return usage(prompt_tokens, completion)

    def body(self, results: list[Result]) -> dict[str, Any]:
        choices, finishes = [], []
        for p, result in enumerate(results):
            for j in range(self.n):
                c = self.choices[p * self.n + j]
                finish = result.finishes[j]
                finishes.append(finish)
                text = c.prompt(result.prompt_logprobs) if self.req.echo else ""
                reason = "length" if self.drop else (finish.finish_reason if finish else "stop")
                if not self.drop:
                    for piece in result.tokens[j]:
                        c.token(piece)
                    c.stop_token(finish.stop_token if finish else None)
                    text += result.texts[j]
                choices.append({"text": text, "index": p * self.n + j,
                                "logprobs": c.logprobs.take() if c.logprobs is not None else None,
                                "finish_reason": reason})
        return self._envelope(choices, usage=self._usage(finishes))

    async def stream(self, gens: list[Generation]) -> AsyncIterator[str]:
        def chunk(index: int, text: str, finish_reason: str | None = None) -> str:
            c = self.choices[index]
            logprobs = c.logprobs.take() if c.logprobs is not None else None
            return sse_event(self._envelope([{"text": text, "index": index, "logprobs": logprobs,
                                              "finish_reason": finish_reason}]))

        wait_for_prompt = self.req.echo and self.req.logprobs is not None
        out = []
        if self.req.echo and not wait_for_prompt:
            for index, c in enumerate(self.choices):
                out.append(chunk(index, c.prompt(None)))
        if out:
            yield "".join(out)
        finishes: list[Finish | None] = [None] * len(self.choices)
        try:
            async for p, batch in _merged(gens):
                out = []
                texts: dict[int, str] = {}
                for piece in batch:
                    if isinstance(piece, PromptPiece):
                        if wait_for_prompt:
                            for j in range(self.n):
                                index = p * self.n + j
                                out.append(chunk(index, self.choices[index].prompt(piece.prompt_logprobs)))
                        continue
                    index = p * self.n + piece.index
                    c = self.choices[index]
                    if isinstance(piece, TokenPiece):
                        if not self.drop:
                            c.token(piece)
                            texts[index] = texts.get(index, "") + piece.delta
                        continue
                    finishes[index] = piece
                    if not self.drop:
                        text = texts.pop(index, "") + piece.delta
                        if text or (c.logprobs is not None and c.logprobs.data["tokens"]):
                            out.append(chunk(index, text))
                        c.stop_token(piece.stop_token)
                    out.append(chunk(index, "", "length" if self.drop else piece.finish_reason))
                for index, text in texts.items():
                    c = self.choices[index]
                    if text or (c.logprobs is not None and c.logprobs.data["tokens"]):
                        out.append(chunk(index, text))
                if out:
                    yield "".join(out)
            if self.req.stream_options and self.req.stream_options.include_usage:
                yield sse_event(self._envelope([], usage=self._usage(finishes)))
        except ApiError as e:
            yield sse_event(e.body("/v1/"))
        yield DONE


# ---------------------------------------------------------------------------------------------- chat


class _ChatChoice:
    """One chat choice's running state: the leading-space strip and its logprobs content."""

    def __init__(self, service: ModelService, logprobs: bool) -> None:
        self.service, self.want_logprobs = service, logprobs
        self.at_start = True
        self.content: list[dict[str, Any]] = []

    def text(self, delta: str) -> str:
        # A model continuing "Assistant:" (or <|assistant_start|>) usually begins with a space: not part of the reply.
        if self.at_start and delta:
            self.at_start = False
            return delta.removeprefix(" ")
        return delta

    def token(self, piece: TokenPiece) -> None:
        if not self.want_logprobs:
            return
        s = self.service

        def entry(token_id: int, logprob: float | None) -> dict[str, Any]:
            return {"token": _token_str(s, token_id), "logprob": _finite(logprob),
                    "bytes": list(_token_bytes(s, token_id))}

        self.content.append({**entry(piece.id, piece.logprob),
                             "top_logprobs": [entry(i, lp) for i, lp in piece.top_logprobs or []]})

    def take(self) -> dict[str, Any] | None:
        if not self.want_logprobs:
            return None
        out, self.content = self.content, []
        return {"content": out, "refusal": None}


class _ChatView:
    def __init__(self, service: ModelService, req: ChatCompletionRequest, n: int, drop_output: bool) -> None:
        self.service, self.req, self.n, self.drop = service, req, n, drop_output
        self.rid, self.created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        self.choices = [_ChatChoice(service, req.logprobs) for _ in range(n)]

    def _envelope(self, obj: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.service.model_id,
                "choices": choices, **extra}

    def _usage(self, finishes: list[Finish | None]) -> dict[str, Any]:
        first = next((f for f in finishes if f is not None), None)
        completion = 0 if self.drop else sum(f.completion_tokens for f in finishes if f is not None)
        return usage(first.prompt_tokens if first else 0, completion)

    def body(self, results: list[Result]) -> dict[str, Any]:
        result, choices = results[0], []
        for j, c in enumerate(self.choices):
            finish = result.finishes[j]
            if not self.drop:
                for piece in result.tokens[j]:
                    c.token(piece)
            text = "" if self.drop else c.text(result.texts[j])
            reason = "length" if self.drop else (finish.finish_reason if finish else "stop")
            choices.append({"index": j, "message": {"role": "assistant", "content": text},
                            "logprobs": c.take(), "finish_reason": reason})
        return self._envelope("chat.completion", choices, usage=self._usage(result.finishes))

    async def stream(self, gens: list[Generation]) -> AsyncIterator[str]:
        def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> str:
            choice = {"index": index, "delta": delta, "logprobs": self.choices[index].take(),
                      "finish_reason": finish_reason}
            return sse_event(self._envelope("chat.completion.chunk", [choice]))

        yield "".join(chunk(j, {"role": "assistant", "content": ""}) for j in range(self.n))
        finishes: list[Finish | None] = [None] * self.n
        try:
            async for _, batch in _merged(gens):
                out = []
                texts: dict[int, str] = {}
                for piece in batch:
                    if isinstance(piece, PromptPiece):
                        continue
                    c = self.choices[piece.index]
                    if isinstance(piece, TokenPiece):
                        if not self.drop:
                            c.token(piece)
                            texts[piece.index] = texts.get(piece.index, "") + piece.delta
                        continue
                    finishes[piece.index] = piece
                    text = "" if self.drop else c.text(texts.pop(piece.index, "") + piece.delta)
                    if text or c.content:
                        out.append(chunk(piece.index, {"content": text}))
                    out.append(chunk(piece.index, {}, "length" if self.drop else piece.finish_reason))
                for index, text in texts.items():
                    c = self.choices[index]
                    text = c.text(text)
                    if text or c.content:
                        out.append(chunk(index, {"content": text}))
                if out:
                    yield "".join(out)
            if self.req.stream_options and self.req.stream_options.include_usage:
                yield sse_event(self._envelope("chat.completion.chunk", [], usage=self._usage(finishes)))
        except ApiError as e:
            yield sse_event(e.body("/v1/"))
        yield DONE

