"""Request and response bodies of the HTTP API (pydantic models; FastAPI publishes them at /openapi.json).

Type and range errors are caught here (422 invalid_request). Limits that depend on the server (prompt size,
max_tokens cap, the model's context length, the tokenizer's alphabet) are checked by the app (400).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt

MAX_SEED = 2**63 - 1


def _valid_unicode(text: str) -> str:
    # JSON may carry lone surrogates ("\ud800"); they are not text and cannot be encoded as UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("string contains a lone UTF-16 surrogate; send valid Unicode text") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]
Temperature = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)]
TopP = Annotated[float, Field(gt=0.0, le=1.0, allow_inf_nan=False)]
MinP = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
RepetitionPenalty = Annotated[float, Field(ge=0.01, le=100.0, allow_inf_nan=False)]
TopK = Annotated[int, Field(ge=0, description="keep the k most likely tokens; 0 or null = off")]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")


# ---- /api


class GenerateRequest(_Request):
    prompt: Text = Field(description="text to continue")
    max_tokens: int = Field(64, description="tokens to generate (1..the server's --max-output-tokens)")
    temperature: Temperature = Field(0.8, description="0 = greedy")
    top_k: TopK | None = None
    top_p: TopP | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed | None = Field(None, description="same seed and request -> same output")
    return_attention: bool = Field(False, description="include attention weights (prompt + output)")
    stream: bool = Field(False, description="answer as server-sent events (as POST /api/generate/stream)")
    stop: Text | list[Text] | None = Field(None, description="up to 4 strings; the output ends before one")
    top_logprobs: int = Field(0, ge=0, le=20, description="alternatives (with log-probabilities) per token")


MAX_PARTS = 64


class ApiChatPart(_Request):
    type: Literal["text", "python", "python_output"] = Field(
        description="the reply's text, a calculator call, or the calculator's answer")
    text: Text


Parts = Annotated[list[ApiChatPart], Field(min_length=1, max_length=MAX_PARTS)]


class ApiChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: Text | Parts = Field(description=f"a string; an assistant's may be a list of up to {MAX_PARTS} parts "
                                  "(a reply with its calculator calls, rendered with the tool's special tokens)")


class ApiChatRequest(_Request):
    messages: list[ApiChatMessage] = Field(min_length=1, max_length=256, description="the conversation so far")
    max_tokens: int = Field(128, description="tokens to generate (1..the server's --max-output-tokens)")
    temperature: Temperature = Field(0.8, description="0 = greedy")
    top_k: TopK | None = None
    top_p: TopP | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed | None = None
    return_attention: bool = False
    stream: bool = False
    stop: Text | list[Text] | None = None
    top_logprobs: int = Field(0, ge=0, le=20)


class AlternativeOut(BaseModel):
    id: int
    text: str
    logprob: float


class TokenOut(BaseModel):
    id: int
    text: str
    logprob: float | None = None
    top_logprobs: list[AlternativeOut] | None = None
    forced: bool = False


class AttentionOut(BaseModel):
    layer: int
    head: int
    weights: list[list[float]] = Field(description="row i: what position i attends to, positions 0..i")


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    generated: str
    tokens: list[TokenOut]
    prompt_tokens: list[TokenOut]
    attention: list[AttentionOut]
    finish_reason: str
    usage: Usage


class ErrorResponseModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    error: str = Field(description="a snake_case kind, e.g. prompt_too_large; other fields give details")
    message: str | None = None


# ---- OpenAI-compatible /v1 (and vLLM's tokenizer endpoints)
#
# Unknown fields are refused (extra="forbid": a 400 unsupported_parameter naming the field), so nothing a client
# asks for is silently ignored. Fields OpenAI defines that we do not implement are declared with their neutral
# value; any other value is refused too (see `unsupported`).

MAX_LOGPROBS = 20
MaxTokens = Annotated[int, Field(ge=0, description="tokens to generate (0..the server's --max-output-tokens)")]


class _OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_OpenAIModel):
    include_usage: bool = Field(False, description="end the stream with a chunk holding the usage")


class _OpenAIRequest(_OpenAIModel):
    model: Text | None = Field(None, description="the served model's id (see GET /v1/models)")
    max_tokens: MaxTokens | None = None
    temperature: Temperature = 1.0
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed | None = Field(None, description="sample j of n draws from seed + j: same seed, same output")
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, description="samples per prompt, sharing one prefill (at most the server's --max-batch)")
    user: Text | None = Field(None, description="an end-user id; it does not change the output")
    # OpenAI fields we do not implement: accepted only at their neutral value
    presence_penalty: float = Field(0.0, description="not implemented: only 0")
    frequency_penalty: float = Field(0.0, description="not implemented: only 0")
    logit_bias: dict[str, float] | None = Field(None, description="not implemented: only null or {}")

    def unsupported(self) -> str | None:
        """The first field set to a value we do not implement, else None."""
        if self.presence_penalty != 0:
            return "presence_penalty"
        if self.frequency_penalty != 0:
            return "frequency_penalty"
        if self.logit_bias:
            return "logit_bias"
        return None


TokenIds = list[StrictInt]


class CompletionRequest(_OpenAIRequest):
    prompt: Text | list[Text] | TokenIds | list[TokenIds] = Field(
        description="a string, a list of strings, a list of token ids (no <|bos|> is added) or a list of such lists; "
        "several prompts give n choices each, in prompt order"
    )
    echo: bool = Field(False, description="the choice's text (and logprobs) start with the prompt")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS,
                                 description="log-probabilities of each token and of the k most likely alternatives")
    best_of: int | None = Field(None, description="not implemented: only 1")
    suffix: Text | None = Field(None, description="not implemented: only null")

    def unsupported(self) -> str | None:
        if self.best_of not in (None, 1):
            return "best_of"
        if self.suffix:
            return "suffix"
        return super().unsupported()


class TextPart(_OpenAIModel):
    type: Literal["text"] = "text"
    text: Text


class ChatMessage(_OpenAIModel):
    role: Text
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage] = Field(max_length=256)
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool = Field(False, description="log-probabilities of the reply's tokens")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives per token (needs logprobs)")
    # not implemented: accepted only when absent (null)
    tools: Any = Field(None, description="not implemented")
    tool_choice: Any = Field(None, description="not implemented")
    functions: Any = Field(None, description="not implemented")
    function_call: Any = Field(None, description="not implemented")
    parallel_tool_calls: Any = Field(None, description="not implemented")
    response_format: Any = Field(None, description='not implemented: only null or {"type": "text"}')

    def unsupported(self) -> str | None:
        for name in ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls"):
            if getattr(self, name) is not None:
                return name
        if self.response_format not in (None, {"type": "text"}):
            return "response_format"
        return super().unsupported()


class TokenizeRequest(_OpenAIModel):
    """vLLM's POST /tokenize: a prompt, or chat messages rendered with the chat template up to where the
    assistant's reply starts, -> ids."""

    model: Text | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, max_length=256)
    add_special_tokens: bool = Field(True, description="a prompt starts with <|bos|>")
    return_token_strs: bool = False


class DetokenizeRequest(_OpenAIModel):
    model: Text | None = None
    tokens: TokenIds


class OpenAIError(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = Field(None, description="the request field at fault, if one is")
    code: str = Field(description="a snake_case kind, e.g. unsupported_parameter, model_not_found")


class OpenAIErrorResponseModel(BaseModel):
    error: OpenAIError


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
