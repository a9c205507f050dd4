"""Text sources: bundled corpora, local files, https downloads and Hugging Face dataset rows.

`load_text(source)` is the one entry point. A source is one of

    builtin:shakespeare | builtin:names                      bundled with the package
    path/to/file.txt                                          a local UTF-8 file (at most 1 GiB)
    https://host/file.txt                                     downloaded once into the cache
    hf://owner/dataset[@revision]?config=&split=&column=&rows=&offset=
                                                              rows of a dataset, via the datasets-server /rows API

Downloads land in `$EMBERGPT_CACHE` (default `~/.cache/embergpt`), written to a temporary file and renamed, so a
crash never leaves a half-written cache entry. Connection errors, 429 and 5xx are retried with exponential backoff
(honouring `Retry-After`). One load has a total deadline over all its requests, retries and waits: a server that
answers one byte per second fails at the deadline, not never. The policy comes from the environment (each value
checked: a whole number or a finite number in its range, else a one-line error):

    EMBERGPT_RETRY_ATTEMPTS (5, 1..100)             EMBERGPT_RETRY_BASE_SECONDS (1.0, 0..3600)
    EMBERGPT_RETRY_MAX_SECONDS (60, 0..3600)        EMBERGPT_HTTP_TIMEOUT (30, per read, 0.001..3600)
    EMBERGPT_DOWNLOAD_DEADLINE (1800, whole load, 0.001..86400)
    EMBERGPT_HF_ENDPOINT (https://datasets-server.huggingface.co)

Every failure is a one-line `DataError` naming the source and what to do.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import hashlib
import http.client
import importlib.resources
import json
import math
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embergpt.atomic_write import write_bytes_atomic
from embergpt.bounded_json import loads as bounded_loads
from embergpt.env_paths import embergpt_cache
from embergpt.errors import DataError
from embergpt.input_files import read_regular_file

MAX_TEXT_BYTES = 1 << 30  # 1 GiB: beyond this a corpus belongs in a streaming pipeline, not one str
BUILTINS: dict[str, str] = {"shakespeare": "shakespeare.txt", "names": "names.txt"}
DEFAULT_HF_ENDPOINT = "https://datasets-server.huggingface.co"
HF_PAGE_ROWS = 100  # the /rows API refuses length > 100
HF_DEFAULT_ROWS = 10_000
HF_MAX_ROWS = 10_000_000
HF_KEYS = ("config", "split", "column", "rows", "offset")
_NAME_RE = re.compile(r"[A-Za-z0-9._-]+")
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_USER_AGENT = "embergpt (+https://github.com/; text loader)"
_READ_CHUNK = 1 << 20

# Indirection so that tests can record the waits instead of sleeping through a Retry-After of several seconds.
_sleep = time.sleep


def _one_line(message: str, limit: int = 400) -> str:
    flat = " ".join(str(message).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _error(source: str, problem: str, advice: str) -> DataError:
    return DataError(_one_line(f"cannot load {source!r}: {problem}; {advice}"))


def cache_dir() -> Path:
    """The root of embergpt's download and token caches: `$EMBERGPT_CACHE` (absolute; DataError if it names a
    file, see embergpt.env_paths), else `~/.cache/embergpt`."""
    return embergpt_cache()


def _env_number(name: str, default: float, low: float, high: float, integer: bool = False) -> float:
    """The number in environment variable `name` (`default` when unset or empty): finite, in [low, high], and
    whole when `integer`. A DataError names the variable and the range otherwise ("inf", "nan", "-1", "1e999")."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    kind = "a whole number" if integer else "a number"
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high and (not integer or value.is_integer())):
        raise DataError(f"{name}={raw[:40]!r} is not {kind} in [{low:g}, {high:g}]; set it to one, or unset it")
    return int(value) if integer else value


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try a remote source: `attempts` tries in all, waiting base * 2**k (capped) in between, each
    read waiting at most `timeout_seconds`, and the whole load (every request, retry and wait) ending within
    `deadline_seconds`."""

    attempts: int = 5
    base_seconds: float = 1.0
    max_seconds: float = 60.0
    timeout_seconds: float = 30.0
    deadline_seconds: float = 1800.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(
            attempts=int(_env_number("EMBERGPT_RETRY_ATTEMPTS", cls.attempts, 1, 100, integer=True)),
            base_seconds=_env_number("EMBERGPT_RETRY_BASE_SECONDS", cls.base_seconds, 0.0, 3600.0),
            max_seconds=_env_number("EMBERGPT_RETRY_MAX_SECONDS", cls.max_seconds, 0.0, 3600.0),
            timeout_seconds=_env_number("EMBERGPT_HTTP_TIMEOUT", cls.timeout_seconds, 0.001, 3600.0),
            deadline_seconds=_env_number("EMBERGPT_DOWNLOAD_DEADLINE", cls.deadline_seconds, 0.001, 86400.0),
        )

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number `attempt` (0-based)."""
        return min(self.max_seconds, self.base_seconds * (2.0 ** min(attempt, 64)))


class Deadline:
    """The wall-clock end of one load, shared by all its requests. Use as a context manager: at the deadline one
    timer shuts down every socket the load has open (`watch`), which ends any read blocked on it; a per-read
    timeout alone never fires against a server that sends one byte per second."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
            if self._timer is None:
                self._timer = threading.Timer(max(0.0, self.remaining()), self._expire)
                self._timer.daemon = True
                self._timer.start()
        if self.expired():
            self._expire()

    def _expire(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Stop the timer: the load is over."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0

    def error(self, source: str) -> DataError:
        return _error(
            source,
            f"no complete answer within the download deadline of {self.seconds:g} s",
            "try again later, or raise EMBERGPT_DOWNLOAD_DEADLINE for a slow connection",
        )


def load_text(source: str, json_cells: bool = False) -> str:
    """Read a whole text corpus from `source` (see the module docstring for the forms). Raises DataError.

    json_cells: an hf:// column of lists or objects (a dataset's "messages") becomes one JSON line per row,
    which is how conversations are read (embergpt.chat.conversations)."""
    if not isinstance(source, str) or not source.strip():
        raise DataError(
            "empty text source; pass builtin:shakespeare, builtin:names, a file path, an https:// URL or hf://..."
        )
    if source.startswith("builtin:"):
        text = _load_builtin(source)
    elif source.startswith("hf://"):
        text = _load_hf(source, json_cells)
    elif source.startswith(("https://", "http://")):
        text = _load_url(source)
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        raise _error(source, "unsupported URL scheme", "use https://, hf://, builtin: or a local file path")
    else:
        text = _load_file(source)
    if not text:
        raise _error(source, "the text is empty", "point it at a corpus with some text in it")
    return text


# ----------------------------------------------------------------------------------------------- local sources


def _load_builtin(source: str) -> str:
    name = source[len("builtin:") :]
    if name not in BUILTINS:
        choices = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise _error(source, "unknown builtin corpus", f"choose one of {choices}")
    resource = importlib.resources.files("embergpt").joinpath("corpora", BUILTINS[name])
    try:
        data = resource.read_bytes()
    except OSError as e:
        raise _error(source, f"the bundled file is missing ({e.strerror})", "reinstall embergpt") from None
    return _decode(data, source, "reinstall embergpt")


def _load_file(source: str) -> str:
    path = Path(source).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise _error(source, "no such file", "check the path, or use builtin:shakespeare") from None
    except OSError as e:
        raise _error(source, f"cannot stat the file ({e.strerror})", "check the path and its permissions") from None
    if path.is_dir():
        raise _error(source, "it is a directory", "pass a text file inside it")
    if not path.is_file():
        raise _error(source, "it is not a regular file", "pass a regular UTF-8 text file")
    if st.st_size > MAX_TEXT_BYTES:
        raise _error(
            source,
            f"the file is {st.st_size / 2**30:.2f} GiB, over the 1 GiB limit",
            "split it or train on a part of it",
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _error(source, f"cannot read the file ({e.strerror})", "check its permissions") from None
    return _decode(data, source, "convert it to UTF-8 text (e.g. iconv -t UTF-8)")


def _decode(data: bytes, source: str, advice: str) -> str:
    if len(data) > MAX_TEXT_BYTES:
        raise _error(source, "the text is over the 1 GiB limit", "use a smaller corpus")
    nul = data.find(b"\x00")
    if nul >= 0:
        raise _error(source, f"it looks binary (a NUL byte at offset {nul})", advice)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _error(source, f"it is not UTF-8 text (invalid byte at offset {e.start})", advice) from None
    return text[1:] if text.startswith("\ufeff") else text


# ---------------------------------------------------------------------------------------------------- HTTP


def _check_url(url: str, source: str) -> urllib.parse.SplitResult:
    """Allow https anywhere, and plain http only to this machine (local test servers)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise _error(source, f"malformed URL ({e})", "check the URL") from None
    if parts.scheme not in ("https", "http") or not host:
        raise _error(source, f"not an http(s) URL with a host: {url!r}", "use https://host/path")
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise _error(source, "plain http is only allowed to 127.0.0.1/localhost", "use https://")
    if parts.username or parts.password:
        raise _error(source, "credentials in URLs are not supported", "remove user:password@ from the URL")
    return parts


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that would have been allowed in the first place (no https -> http)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        _check_url(urllib.parse.urljoin(req.full_url, newurl), self.source)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _DeadlineConnection:
    """Mixed into http.client's connections: its socket is watched by the load's Deadline."""

    def __init__(self, *args: Any, deadline: Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[call-arg]
        create = self._create_connection  # type: ignore[attr-defined]

        def create_watched(*a: Any, **k: Any) -> socket.socket:
            # The TCP socket itself is watched, from before the TLS handshake on: urllib drops `self.sock` once
            # the headers are in, while the response still reads from it.
            sock = create(*a, **k)
            deadline.watch(sock)
            return sock

        self._create_connection = create_watched


class _DeadlineHTTP(_DeadlineConnection, http.client.HTTPConnection):
    pass


class _DeadlineHTTPS(_DeadlineConnection, http.client.HTTPSConnection):
    pass


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._connection = functools.partial(_DeadlineHTTP, deadline=deadline)

    def http_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(self._connection, req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: Deadline) -> None:
        super().__init__()
        self._connection = functools.partial(_DeadlineHTTPS, deadline=deadline)

    def https_open(self, req):  # type: ignore[no-untyped-def]
        return self.do_open(self._connection, req, context=getattr(self, "_context", None))


def _opener(url: str, source: str, deadline: Deadline) -> urllib.request.OpenerDirector:
    handlers: list[urllib.request.BaseHandler] = [
        _CheckedRedirects(source), _DeadlineHTTPHandler(deadline), _DeadlineHTTPSHandler(deadline)
    ]
    if urllib.parse.urlsplit(url).hostname in _LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy cannot reach our loopback test server
    return urllib.request.build_opener(*handlers)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _http_error_detail(err: urllib.error.HTTPError) -> str:
    """The server's own one-line reason, e.g. the datasets-server's {"error": "..."} body."""
    try:
        body = err.read(4096)
    except Exception:  # the body is a courtesy; the status code already says what happened
        return ""
    try:
        payload = bounded_loads(body, what="error body", max_depth=4, error=DataError)
    except DataError:
        return ""
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return f": {_one_line(payload['error'], 200)}"
    return ""


class _Progress:
    """A download's progress on stderr, every few seconds, when stderr is a terminal (never in logs or tests)."""

    def __init__(self, source: str) -> None:
        self.source, self.start, self.last = source, time.monotonic(), time.monotonic()
        self.enabled = sys.stderr.isatty()

    def update(self, received: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < 2.0:
            return
        self.last = now
        of = f" of {total / 1e6:.1f}" if total else ""
        rate = received / 1e6 / max(1e-9, now - self.start)
        print(f"\rdownloading {self.source}: {received / 1e6:.1f}{of} MB ({rate:.2f} MB/s)", end="",
              file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.last > self.start:
            print(file=sys.stderr, flush=True)


def _fetch(url: str, source: str, dest: Path, policy: RetryPolicy, max_bytes: int, deadline: Deadline) -> None:
    """Download `url` into the file `dest` (overwritten), retrying transient failures until `deadline`.
    Raises DataError."""
    _check_url(url, source)
    opener = _opener(url, source, deadline)
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    last_problem = "no attempt made"
    for attempt in range(policy.attempts):
        wait: float | None = None
        if deadline.expired():
            raise deadline.error(source)
        try:
            timeout = max(0.001, min(policy.timeout_seconds, deadline.remaining()))
            with opener.open(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise _error(source, f"the server sends {int(length)} bytes, over the limit", "use a smaller file")
                total = int(length) if length and length.isdigit() else None
                received = 0
                progress = _Progress(source)
                with open(dest, "wb") as out:
                    while chunk := response.read1(_READ_CHUNK):
                        received += len(chunk)
                        if received > max_bytes:
                            raise _error(source, "the download is over the 1 GiB limit", "use a smaller file")
                        out.write(chunk)
                        progress.update(received, total)
                progress.done()
                if deadline.expired():  # the socket was shut at the deadline: what came is not the whole body
                    raise deadline.error(source)
                if total is not None and received != total:
                    raise http.client.IncompleteRead(b"", total - received)
            return
        except DataError:
            raise
        except urllib.error.HTTPError as e:
            detail = _http_error_detail(e)
            if e.code == 429 or 500 <= e.code <= 599:
                last_problem = f"HTTP {e.code} {e.reason}{detail}"
                wait = _retry_after(e.headers)
            elif e.code == 404:
                raise _error(
                    source, f"HTTP 404 Not Found{detail}", "check the URL (or dataset, config and split)"
                ) from None
            else:
                raise _error(
                    source, f"HTTP {e.code} {e.reason}{detail}", "check the URL and its access rights"
                ) from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                raise _error(
                    source, f"TLS failure ({e.reason})", "check the host name and system certificates"
                ) from None
            last_problem = f"connection failed ({e.reason})"
        except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as e:
            last_problem = f"transfer failed ({type(e).__name__}{': ' + str(e) if str(e) else ''})"
        if deadline.expired():
            raise deadline.error(source)
        if attempt + 1 < policy.attempts:
            delay = policy.backoff(attempt) if wait is None else min(wait, policy.max_seconds)
            if delay >= deadline.remaining():
                raise _error(
                    source, f"{last_problem}; the next retry would start after the download deadline",
                    "try again later, or raise EMBERGPT_DOWNLOAD_DEADLINE",
                )
            _sleep(delay)
    raise _error(
        source,
        f"{last_problem}, after {policy.attempts} attempts",
        "check the URL and your connection, or try again later",
    )


def _cache_path(kind: str, key: str) -> Path:
    return cache_dir() / kind / f"{hashlib.sha256(key.encode('utf-8')).hexdigest()[:32]}.txt"


def _read_cached(path: Path, source: str) -> str | None:
    if not os.path.lexists(path):
        return None
    try:
        data = read_regular_file(path, max_bytes=MAX_TEXT_BYTES, what="cache file", error=DataError)
    except DataError as e:
        raise _error(source, str(e), f"delete {path} and retry") from None
    return _decode(data, source, f"delete the cache file {path} and retry")


def _load_url(source: str) -> str:
    _check_url(source, source)
    target = _cache_path("http", source)
    cached = _read_cached(target, source)
    if cached is not None:
        return cached
    policy = RetryPolicy.from_env()
    deadline = Deadline(policy.deadline_seconds)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with deadline:
            _fetch(source, source, tmp, policy, MAX_TEXT_BYTES, deadline)
        text = _decode(tmp.read_bytes(), source, "point it at a UTF-8 text file")
        os.replace(tmp, target)  # validated first, so the cache only ever holds good text
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return text


# ------------------------------------------------------------------------------------------ Hugging Face rows


@dataclass(frozen=True)
class HFSource:
    """A parsed `hf://owner/dataset[@revision]?config=&split=&column=&rows=&offset=` source."""

    dataset: str
    revision: str | None = None
    config: str = "default"
    split: str = "train"
    column: str = "text"
    rows: int = HF_DEFAULT_ROWS
    offset: int = 0


_HF_USAGE = "use hf://owner/dataset[@revision]?config=NAME&split=NAME&column=NAME&rows=N&offset=N"


def parse_hf_source(source: str) -> HFSource:
    """Validate an `hf://` source strictly: safe names, known keys, each at most once. Raises DataError."""
    rest = source[len("hf://") :]
    if "#" in rest:
        raise _error(source, "a fragment (#...) is not allowed", _HF_USAGE)
    path, _, query = rest.partition("?")
    parts = path.split("/")
    if len(parts) != 2:
        raise _error(source, "the dataset must be exactly owner/dataset", _HF_USAGE)
    owner, name = parts
    revision: str | None = None
    if "@" in name:
        name, _, revision = name.partition("@")
    for label, value in (("owner", owner), ("dataset", name), ("revision", revision)):
        if value is None:
            continue
        if not _NAME_RE.fullmatch(value) or value in (".", ".."):
            raise _error(source, f"invalid {label} {value!r} (allowed: letters, digits, . _ -)", _HF_USAGE)
    fields: dict[str, Any] = {}
    if query:
        for item in query.split("&"):
            key, eq, raw = item.partition("=")
            if not eq:
                raise _error(source, f"query item {item!r} is not key=value", _HF_USAGE)
            key = urllib.parse.unquote(key)
            value = urllib.parse.unquote_plus(raw)
            if key not in HF_KEYS:
                raise _error(source, f"unknown key {key!r} (known: {', '.join(HF_KEYS)})", _HF_USAGE)
            if key in fields:
                raise _error(source, f"key {key!r} is given twice", "give each key once")
            if not value:
                raise _error(source, f"key {key!r} has an empty value", _HF_USAGE)
            if key in ("rows", "offset"):
                if not value.isdigit():
                    raise _error(source, f"{key}={value!r} is not a whole number", _HF_USAGE)
                number = int(value)
                if key == "rows" and not 1 <= number <= HF_MAX_ROWS:
                    raise _error(source, f"rows={number} is out of range", f"use 1 <= rows <= {HF_MAX_ROWS}")
                fields[key] = number
            elif key == "column":
                if len(value) > 256 or any(ord(c) < 32 for c in value):
                    raise _error(source, f"invalid column name {value!r}", _HF_USAGE)
                fields[key] = value
            else:
                if not _NAME_RE.fullmatch(value) or value in (".", ".."):
                    raise _error(source, f"invalid {key} {value!r} (allowed: letters, digits, . _ -)", _HF_USAGE)
                fields[key] = value
    return HFSource(dataset=f"{owner}/{name}", revision=revision, **fields)


def hf_endpoint() -> str:
    """The datasets-server base URL: `$EMBERGPT_HF_ENDPOINT`, else the public one."""
    return (os.environ.get("EMBERGPT_HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


MAX_REPLY_BYTES = 64 << 20  # one page of 100 rows; its cells are capped by the datasets-server


def _fetch_json(url: str, source: str, policy: RetryPolicy, scratch: Path, deadline: Deadline) -> Any:
    """One datasets-server reply, bounded in size and nesting depth before it is parsed."""
    _fetch(url, source, scratch, policy, MAX_REPLY_BYTES, deadline)
    data = read_regular_file(scratch, max_bytes=MAX_REPLY_BYTES, what="server reply", error=DataError)
    try:
        return bounded_loads(data, what="reply", max_bytes=MAX_REPLY_BYTES, error=DataError)
    except DataError as e:
        raise _error(
            source,
            f"the server sent malformed JSON ({e})",
            "check EMBERGPT_HF_ENDPOINT points at a datasets-server, or try again later",
        ) from None


def _page_rows(payload: Any, source: str, url: str) -> tuple[list[dict[str, Any]], int | None]:
    bad = "check EMBERGPT_HF_ENDPOINT points at a datasets-server"
    if not isinstance(payload, dict) or not isinstance(payload.get("rows"), list):
        raise _error(source, f"the response from {url} has no 'rows' list", bad)
    rows: list[dict[str, Any]] = []
    for item in payload["rows"]:
        if not isinstance(item, dict) or not isinstance(item.get("row"), dict):
            raise _error(source, f"the response from {url} has a row without a 'row' object", bad)
        rows.append(item["row"])
    total = payload.get("num_rows_total")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
        raise _error(source, f"the response from {url} has a bad num_rows_total {total!r}", bad)
    return rows, total


def _load_hf(source: str, json_cells: bool = False) -> str:
    spec = parse_hf_source(source)
    endpoint = hf_endpoint()
    _check_url(endpoint, f"EMBERGPT_HF_ENDPOINT={endpoint}")
    key = json.dumps(["hf", endpoint, *(getattr(spec, f) for f in HFSource.__dataclass_fields__)]
                     + (["json"] if json_cells else []))
    target = _cache_path("hf", key)
    cached = _read_cached(target, source)
    if cached is not None:
        return cached

    policy = RetryPolicy.from_env()
    deadline = Deadline(policy.deadline_seconds)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch_name = tempfile.mkstemp(dir=target.parent, prefix=".rows.", suffix=".json")
    os.close(fd)
    scratch = Path(scratch_name)
    cells: list[str] = []
    size = 0
    pos, end = spec.offset, spec.offset + spec.rows
    total: int | None = None
    try:
        while pos < end:
            length = min(HF_PAGE_ROWS, end - pos)
            params = {"dataset": spec.dataset, "config": spec.config, "split": spec.split}
            if spec.revision is not None:
                params["revision"] = spec.revision
            params.update(offset=str(pos), length=str(length))
            url = f"{endpoint}/rows?{urllib.parse.urlencode(params)}"
            rows, total = _page_rows(_fetch_json(url, source, policy, scratch, deadline), source, url)
            rows = rows[:length]  # never more than asked for, whatever the server sends
            for row in rows:
                if spec.column not in row:
                    columns = ", ".join(sorted(map(str, row))) or "none"
                    raise _error(
                        source, f"no column {spec.column!r} in the rows (columns: {columns})", "add &column=NAME"
                    )
                cell = row[spec.column]
                if cell is None:
                    continue  # a missing value in a nullable column: nothing to train on
                if json_cells and isinstance(cell, (list, dict)):
                    cell = json.dumps(cell if isinstance(cell, dict) else {"messages": cell}, ensure_ascii=False)
                if not isinstance(cell, str):
                    raise _error(
                        source,
                        f"column {spec.column!r} holds {type(cell).__name__} values, not text",
                        "pick a text column with &column=NAME",
                    )
                cells.append(cell)
                size += len(cell) + 1
                if size > MAX_TEXT_BYTES:
                    raise _error(source, "the rows add up to over 1 GiB of text", "ask for fewer rows with &rows=N")
            pos += len(rows)
            if len(rows) < length or (total is not None and pos >= total):
                break
    finally:
        deadline.cancel()
        with contextlib.suppress(FileNotFoundError):
            scratch.unlink()
    if not cells:
        where = f" (the split has {total} rows)" if total is not None else ""
        raise _error(source, f"no text rows at offset {spec.offset}{where}", "lower &offset= or check the split")
    text = "\n".join(cells)
    write_bytes_atomic(target, text.encode("utf-8"))
    return text
