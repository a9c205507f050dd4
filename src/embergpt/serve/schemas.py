"""Request and response bodies of the HTTP API (pydantic models; FastAPI publishes them at /openapi.json).

Type and range errors are caught here (422 invalid_request). Limits that depend on the server (prompt size,
max_tokens cap, the model's context length, the tokenizer's alphabet) are checked by the app (400).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

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


class ApiChatMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: Text


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


# ---- OpenAI-compatible /v1


class StreamOptions(_Request):
    include_usage: bool = False


class _OpenAIRequest(_Request):
    model: Text | None = None
    max_tokens: int | None = None
    temperature: Temperature = 1.0
    top_p: TopP | None = None
    top_k: TopK | None = None
    min_p: MinP | None = None
    repetition_penalty: RepetitionPenalty = 1.0
    seed: Seed | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, description="only 1 is supported")


class CompletionRequest(_OpenAIRequest):
    prompt: Text | list[Text] = Field(description="a string (or a list holding one string)")


class TextPart(_Request):
    type: Literal["text"] = "text"
    text: Text


class ChatMessage(_Request):
    role: Text
    content: Text | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_OpenAIRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
