"""Every error the server answers is JSON: {"error": "snake_case_kind", ...details}.

`ApiError` is raised by the app's own checks; the handlers installed by `install_error_handlers` give FastAPI's
own errors (validation 422, malformed JSON, 404, 405) and unexpected exceptions the same shape.

Paths of the OpenAI-compatible API (/v1/..., and vLLM's /tokenize, /detokenize, /tokenizer_info) answer in
OpenAI's shape instead, {"error": {"message", "type", "param", "code": kind, ...details}}, so that OpenAI clients
show the reason (`e.code`, `e.message`); there a body that does not match the schema is a 400, as OpenAI's.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("embergpt.serve")

HTTP_KINDS = {
    400: "malformed_json",  # FastAPI raises a bare 400 only when it cannot parse the body (e.g. not UTF-8)
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


class SafeJSONResponse(JSONResponse):
    """JSON that always renders: ASCII-escaped (lone surrogates survive), NaN/inf refused at the source."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


OPENAI_PATHS = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PATHS)


def _openai_type(status: int) -> str:
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def error_body(status: int, kind: str, message: str, details: dict[str, Any], route: str = "") -> dict[str, Any]:
    """The JSON of an error: embergpt's flat shape, or OpenAI's nested one when `route` is an OpenAI path."""
    if not is_openai_path(route):
        return {"error": kind, "message": message, **details}
    rest = {k: v for k, v in details.items() if k not in ("param", "message", "type", "code")}
    param = details.get("param")
    return {"error": {"message": message, "type": _openai_type(status), "param": param, "code": kind, **rest}}


class ApiError(Exception):
    """An error response: status code, snake_case kind, details (JSON-able), optional headers."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None, **details: Any):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers, self.details = status, kind, message, headers, details

    def body(self, route: str = "") -> dict[str, Any]:
        """The error's JSON for a request to `route` (its URL path)."""
        return error_body(self.status, self.kind, self.message, self.details, route)

    def response(self, route: str = "") -> SafeJSONResponse:
        return SafeJSONResponse(self.body(route), status_code=self.status, headers=self.headers)


def error_response(status: int, kind: str, message: str, route: str = "", **details: Any) -> SafeJSONResponse:
    return ApiError(status, kind, message, **details).response(route)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return str(value)


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # The offending input is left out: it can be large, and need not be valid JSON text.
    out = []
    for err in exc.errors():
        item = {"loc": _json_safe(list(err.get("loc", ()))), "msg": str(err.get("msg", "")), "type": err.get("type")}
        if err.get("ctx"):
            item["ctx"] = _json_safe(err["ctx"])
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> SafeJSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> SafeJSONResponse:
        details = _validation_details(exc)
        path = request.url.path
        content_type = request.headers.get("content-type", "")
        if request.method == "POST" and "json" not in content_type and any(d["loc"] == ["body"] for d in details):
            return error_response(
                415,
                "unsupported_media_type",
                f"send the body as JSON with the header Content-Type: application/json (got {content_type!r})",
                path,
            )
        if any(d["type"] == "json_invalid" for d in details):
            msg = next(d["msg"] for d in details if d["type"] == "json_invalid")
            return error_response(400, "malformed_json", f"the request body is not valid JSON: {msg}", path)
        if is_openai_path(path):
            return _openai_validation_error(details, path)
        return error_response(422, "invalid_request", "the request does not match the schema", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> SafeJSONResponse:
        kind = HTTP_KINDS.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, kind, str(exc.detail), request.url.path, path=request.url.path)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> SafeJSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", f"{type(exc).__name__}: the server failed; see its log",
                              request.url.path)


def _openai_validation_error(details: list[dict[str, Any]], path: str) -> SafeJSONResponse:
    """A /v1 body that does not match its schema: 400, naming the first offending field; a field we do not know
    (extra="forbid") is an unsupported_parameter, as OpenAI's clients expect."""
    first = details[0] if details else {"loc": ["body"], "msg": "invalid request", "type": None}
    param = ".".join(str(part) for part in first["loc"][1:]) or None
    if first["type"] == "extra_forbidden":
        return error_response(400, "unsupported_parameter", f"unsupported parameter {param!r}: this server does not "
                              "implement it", path, param=param)
    return error_response(400, "invalid_request", f"{param or 'body'}: {first['msg']}", path, param=param,
                          details=details)
