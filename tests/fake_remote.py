"""A real HTTP server on 127.0.0.1, in a thread, standing in for the remote sources in tests.

It serves two things:
- plain files (`add_file`), like an https file host;
- the Hugging Face datasets-server `/rows` API (`add_dataset`), with its response shape
  `{"features": [...], "rows": [{"row_idx", "row", "truncated_cells"}], "num_rows_total", "num_rows_per_page",
  "partial"}` and its refusal of `length > 100`.

Failures are scripted per request (`fail_next`): an HTTP status (with a Retry-After, an error body), a malformed
JSON body, a dropped connection, a truncated body, a stall past the client's timeout, or a drip (the headers or
the body sent one byte every `delay` seconds, which no per-read timeout catches).
Every request is recorded in `requests`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Failure:
    """One scripted misbehaviour: `kind` is "status", "malformed", "drop", "truncate", "stall" (answer nothing
    for `delay` seconds, then hang up), "drip_body" or "drip_headers" (one byte every `delay` seconds)."""

    kind: str
    status: int = 500
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    path_prefix: str = "/"


@dataclass
class Request:
    path: str
    query: dict[str, str]
    at: float


class FakeRemote:
    """Start with `with FakeRemote() as remote:`; `remote.url` is its `http://127.0.0.1:PORT` base."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.datasets: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        self.failures: deque[Failure] = deque()
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-remote", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeRemote:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def add_file(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; returns its full URL."""
        self.files[path] = data
        return self.url + path

    def add_dataset(
        self, dataset: str, rows: list[dict[str, Any]], config: str = "default", split: str = "train"
    ) -> None:
        self.datasets[(dataset, config, split)] = rows

    def fail_next(self, count: int, failure: Failure) -> None:
        """The next `count` requests whose path starts with `failure.path_prefix` misbehave as `failure`."""
        with self._lock:
            self.failures.extend([failure] * count)

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def _take_failure(self, path: str) -> Failure | None:
        with self._lock:
            for i, failure in enumerate(self.failures):
                if path.startswith(failure.path_prefix):
                    del self.failures[i]
                    return failure
        return None


def _make_handler(remote: FakeRemote) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, length: int | None = None):
            self.send_response(status)
            self.send_header("Content-Length", str(len(body) if length is None else length))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def _json(self, status: int, payload: Any) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            parsed = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query, keep_blank_values=True))
            with remote._lock:
                remote.requests.append(Request(parsed.path, query, time.monotonic()))
            failure = remote._take_failure(parsed.path)
            if failure is not None:
                self._fail(failure, parsed.path)
                return
            if parsed.path == "/rows":
                self._rows(query)
            elif parsed.path in remote.files:
                self._send(200, remote.files[parsed.path], {"Content-Type": "text/plain; charset=utf-8"})
            else:
                self._send(404, b"not found", {"Content-Type": "text/plain"})

        def _fail(self, failure: Failure, path: str) -> None:
            if failure.kind == "status":
                self._send(failure.status, failure.body, failure.headers)
            elif failure.kind == "malformed":
                self._send(200, b'{"rows": [{"row_idx": 0, "row": {"te', {"Content-Type": "application/json"})
            elif failure.kind == "drop":
                self.close_connection = True
                self.connection.close()
            elif failure.kind == "stall":
                time.sleep(failure.delay)
                self.close_connection = True
            elif failure.kind in ("drip_body", "drip_headers"):
                self._drip(failure, remote.files.get(path, b"x" * 1000))
            elif failure.kind == "truncate":
                body = remote.files.get(path, b"partial body")
                self._send(200, body[: len(body) // 2], length=len(body) + 10)
                self.close_connection = True
            else:
                raise ValueError(f"unknown failure kind {failure.kind!r}")

        def _drip(self, failure: Failure, body: bytes) -> None:
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            if failure.kind == "drip_body":
                self.wfile.write(head)
                head = b""
            self.close_connection = True
            try:
                for i in range(len(head + body)):
                    self.wfile.write((head + body)[i : i + 1])
                    self.wfile.flush()
                    time.sleep(failure.delay)
            except OSError:
                pass  # the client gave up: what this failure is for

        def _rows(self, query: dict[str, str]) -> None:
            for required in ("dataset", "config", "split"):
                if required not in query:
                    self._json(422, {"error": f"Parameter '{required}' is required"})
                    return
            try:
                offset = int(query.get("offset", "0"))
                length = int(query.get("length", "100"))
            except ValueError:
                self._json(422, {"error": "Parameters 'offset' and 'length' must be integers"})
                return
            if offset < 0 or length < 0:
                self._json(422, {"error": "Parameters 'offset' and 'length' must be positive"})
                return
            if length > 100:
                self._json(422, {"error": "Parameter 'length' must not be greater than 100"})
                return
            key = (query["dataset"], query["config"], query["split"])
            if key not in remote.datasets:
                self._json(404, {"error": "The dataset does not exist, or is not accessible without authentication"})
                return
            rows = remote.datasets[key]
            columns = sorted({c for row in rows for c in row})
            self._json(
                200,
                {
                    "features": [
                        {"feature_idx": i, "name": c, "type": {"dtype": "string", "_type": "Value"}}
                        for i, c in enumerate(columns)
                    ],
                    "rows": [
                        {"row_idx": i, "row": rows[i], "truncated_cells": []}
                        for i in range(offset, min(offset + length, len(rows)))
                    ],
                    "num_rows_total": len(rows),
                    "num_rows_per_page": 100,
                    "partial": False,
                },
            )

    return Handler
