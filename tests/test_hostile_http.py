"""Hostile HTTP clients against a real `embergpt serve` on 127.0.0.1, over raw sockets.

Each limit of embergpt.serve.http_limits and the rate limit's client key is attacked the way the hardening review
did (issue 15): forged X-Forwarded-For, a 64 MB header, headers and a body dripped a byte per second, idle
kept-alive and silent connections, answers never read, 1,100 held connections, one client holding many, a WebSocket
upgrade. Clients at other addresses are loopback source addresses (127.0.x.y). Every loop is bounded in count and in
time.
Add a test here for every new way a client can hold or bypass the server.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from serve_fixtures import ServerProcess

from embergpt.serve import api_docs
from embergpt.serve.server import uvicorn_config
from embergpt.serve.settings import resolve_settings

pytest_plugins = ["serve_fixtures"]

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
KEEP_ALIVE = 1.5
SEND_TIMEOUT = 2.0
MAX_HEADER_BYTES = 4096
MAX_CONNECTIONS = 64
PER_CLIENT = 8
BURST = 5
SLACK = 2.0  # scheduling slack on a loaded 2-core machine

LIMIT_FLAGS = [
    "--max-header-bytes", str(MAX_HEADER_BYTES),
    "--header-timeout", str(HEADER_TIMEOUT),
    "--body-timeout", str(BODY_TIMEOUT),
    "--keep-alive-timeout", str(KEEP_ALIVE),
    "--max-connections", str(MAX_CONNECTIONS),
    "--max-connections-per-client", str(PER_CLIENT),
    "--send-timeout", str(SEND_TIMEOUT),
    "--rate-limit-rps", "0.1",
    "--rate-limit-burst", str(BURST),
]  # fmt: skip


@pytest.fixture(scope="module")
def limited(serve_checkpoint: Path):
    """A server with small HTTP limits and a small rate-limit budget, trusting no proxy (the default)."""
    proc = ServerProcess(serve_checkpoint, LIMIT_FLAGS)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def proxied(serve_checkpoint: Path):
    """The same budget, behind a 'proxy' at 127.0.0.1 (set by the environment variable, not the flag)."""
    env = {"EMBERGPT_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    flags = ["--rate-limit-rps", "0.1", "--rate-limit-burst", str(BURST)]
    flags += ["--max-connections-per-client", str(PER_CLIENT)]
    proc = ServerProcess(serve_checkpoint, flags, env=env)
    yield proc
    proc.stop()


def address(server: ServerProcess) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(server: ServerProcess, source: str | None = None, timeout: float = 10.0) -> socket.socket:
    source_address = (source, 0) if source else None
    return socket.create_connection(address(server), timeout=timeout, source_address=source_address)


def read_until_closed(sock: socket.socket, deadline: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or resets) the connection; and when that happened."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            break
        except TimeoutError:
            continue
        if not chunk:
            break
        data += chunk
    return data, time.monotonic()


def read_one_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length, leaving the connection open."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def status_of(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> dict:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


def generate_request(forwarded_for: str | None = None) -> bytes:
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 1, "temperature": 0}).encode()
    forwarded = f"X-Forwarded-For: {forwarded_for}\r\n".encode() if forwarded_for else b""
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + forwarded
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    return head + body


def send(server: ServerProcess, request: bytes, source: str | None = None) -> int | None:
    with connect(server, source) as sock:
        sock.sendall(request)
        response, _ = read_until_closed(sock, time.monotonic() + 30)
    return status_of(response)


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---- the rate limit's key


def test_forwarded_for_does_not_pick_the_rate_limit_key(limited):
    """30 requests, each claiming another client in X-Forwarded-For: one budget (the peer's), then 429."""
    statuses = [send(limited, generate_request(f"10.0.0.{i}")) for i in range(30)]
    assert statuses[:BURST] == [200] * BURST  # a full bucket: the budget is the peer's
    # At 0.1 tokens/s at most one more token can refill while the 30 requests run.
    assert statuses.count(429) >= 30 - BURST - 1, statuses
    assert set(statuses) <= {200, 429}


def test_metrics_counts_in_the_rate_limit(limited):
    """/api/metrics reads a file: it spends the same budget (drained by now or within BURST + 2 requests)."""
    request = b"GET /api/metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    statuses = [send(limited, request) for _ in range(BURST + 2)]
    assert 429 in statuses and set(statuses) <= {200, 429}, statuses


def test_forwarded_for_is_believed_from_a_configured_proxy_only(proxied):
    # From the trusted proxy (127.0.0.1), each forwarded client has its own bucket: all 30 pass ...
    statuses = [send(proxied, generate_request(f"10.0.1.{i}")) for i in range(30)]
    assert statuses == [200] * 30
    # ... and one forwarded client still has a budget of BURST (+1 refill at most).
    statuses = [send(proxied, generate_request("10.0.2.1")) for _ in range(BURST + 3)]
    assert statuses[:BURST] == [200] * BURST and statuses.count(429) >= 2, statuses
    # From 127.0.0.2, not in the list, the header is ignored: the peer's own budget applies.
    statuses = [send(proxied, generate_request(f"10.0.3.{i}"), source="127.0.0.2") for i in range(BURST + 3)]
    assert statuses[:BURST] == [200] * BURST and statuses.count(429) >= 2, statuses


# ---- header size


def test_64mb_header_is_refused_early_with_bounded_memory(limited):
    before = rss_bytes(limited.proc.pid)
    chunk = b"a" * (1 << 20)
    sent, t0 = 0, time.monotonic()
    with connect(limited) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: t\r\nX-Big: ")
        try:
            while sent < 64 << 20 and time.monotonic() - t0 < 20:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed while we were still sending: also a refusal
        response, _ = read_until_closed(sock, time.monotonic() + 10)
    assert time.monotonic() - t0 < 20
    status = status_of(response)
    assert status in (431, None)  # None: reset before the 431 could be read (the server dropped the connection)
    if status == 431:
        assert json_body(response)["error"] == "headers_too_large"
    grown = rss_bytes(limited.proc.pid) - before
    assert grown < 16 << 20, f"the server grew by {grown / 2**20:.1f} MB for a {sent / 2**20:.0f} MB header"


def test_header_just_under_the_cap_is_served_and_just_over_is_431(limited):
    head = b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Pad: "
    pad = MAX_HEADER_BYTES - len(head) - 4  # the request line and headers end at exactly the cap
    assert send(limited, head + b"p" * pad + b"\r\n\r\n") == 200
    with connect(limited) as sock:
        sock.sendall(head + b"p" * (pad + 1) + b"\r\n\r\n")
        response, _ = read_until_closed(sock, time.monotonic() + 10)
    assert status_of(response) == 431 and json_body(response)["max_header_bytes"] == MAX_HEADER_BYTES


# ---- time to receive headers and body


def test_headers_dripped_one_byte_per_second_get_408(limited):
    request = b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n"
    with connect(limited) as sock:
        t0 = time.monotonic()
        closed_at = None
        for byte in request[:-1]:  # never complete: the deadline must end it
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            time.sleep(0.5)
            if time.monotonic() - t0 > HEADER_TIMEOUT + SLACK:
                break
        response, ended = read_until_closed(sock, t0 + HEADER_TIMEOUT + 2 * SLACK)
    assert status_of(response) == 408 or closed_at is not None, response
    if response:
        assert json_body(response)["error"] == "request_timeout"
    assert (closed_at or ended) - t0 < HEADER_TIMEOUT + 2 * SLACK


def test_silent_connection_is_closed_by_the_header_deadline(limited):
    with connect(limited) as sock:
        t0 = time.monotonic()
        response, ended = read_until_closed(sock, t0 + HEADER_TIMEOUT + 2 * SLACK)
    assert status_of(response) == 408
    assert HEADER_TIMEOUT - 0.5 < ended - t0 < HEADER_TIMEOUT + 2 * SLACK


def test_body_sent_one_byte_per_second_gets_408_within_the_limit(limited):
    body = json.dumps({"prompt": "ROMEO:", "max_tokens": 1}).encode()
    head = (
        b"POST /api/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(limited) as sock:
        sock.sendall(head)
        t0 = time.monotonic()
        closed_at = None
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic()
                break
            time.sleep(1.0)
            if time.monotonic() - t0 > BODY_TIMEOUT + SLACK:
                break
        response, ended = read_until_closed(sock, t0 + BODY_TIMEOUT + 2 * SLACK)
    assert status_of(response) == 408 or closed_at is not None, response
    if response:
        assert json_body(response)["error"] == "request_timeout"
    assert (closed_at or ended) - t0 < BODY_TIMEOUT + 2 * SLACK


def test_idle_keep_alive_connection_is_closed(limited):
    with connect(limited) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")  # keep-alive: HTTP/1.1's default
        first = read_one_response(sock)
        t0 = time.monotonic()
        rest, ended = read_until_closed(sock, t0 + KEEP_ALIVE + 2 * SLACK)
    assert status_of(first) == 200
    assert rest == b""  # closed without another answer
    assert KEEP_ALIVE - 1.0 < ended - t0 < KEEP_ALIVE + 2 * SLACK  # closed by the timer, not at once


def test_a_client_that_stops_reading_is_dropped(limited):
    """Large answers to a client that never reads: 8 pipelined requests for Swagger's 1.5 MB script (more than the
    kernel's socket buffers hold). The server's buffer fills, and after --send-timeout the connection is dropped
    instead of held forever."""
    bundle = api_docs.swagger_ui_dir()
    if bundle is None:
        pytest.skip("swagger-ui-bundle-v2 is not installed (the large file this test asks for)")
    size, n = (bundle / "swagger-ui-bundle.js").stat().st_size, 8
    request = f"GET {api_docs.ASSETS_URL}/swagger-ui-bundle.js HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    with connect(limited) as sock:
        sock.sendall(request * n)
        time.sleep(SEND_TIMEOUT + SLACK)  # not reading
        t0 = time.monotonic()
        received, ended = read_until_closed(sock, t0 + 30)
    assert status_of(received) == 200
    assert len(received) < n * size, "every answer was delivered: the client never stalled the server"
    assert ended - t0 < 25  # what was in flight drains, then the connection ends

    # A client that reads gets all of it under the same limits.
    with connect(limited) as sock:
        sock.sendall(request)
        assert len(read_one_response(sock).split(b"\r\n\r\n", 1)[1]) == size


def test_a_websocket_upgrade_is_not_taken(limited):
    """No route speaks WebSocket: an Upgrade request is answered as plain HTTP, never switched (101)."""
    request = (
        b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with connect(limited) as sock:
        sock.sendall(request)
        assert status_of(read_one_response(sock)) == 200


# ---- open connections


def hold(server: ServerProcess, sources: list[str], expect_refused: int) -> tuple[list[socket.socket], list[dict]]:
    """One connection from each source address; waits (bounded) until `expect_refused` of them were refused.
    Returns the connections still open and the error bodies of the refusals (each a 503 or a bare close)."""
    socks, refusals, t0 = [], [], time.monotonic()
    try:
        for source in sources:
            socks.append(connect(server, source=source, timeout=5))
            socks[-1].setblocking(False)
            assert time.monotonic() - t0 < 60
        refused: set[int] = set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(refused) < expect_refused:
            for i, sock in enumerate(socks):
                if i in refused:
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                assert data == b"" or status_of(data) == 503, data[:200]
                refusals.append(json_body(data) if data else {})
                refused.add(i)
            time.sleep(0.2)
        time.sleep(0.5)  # a refusal beyond those expected would show here
        for i, sock in enumerate(socks):
            if i not in refused:
                try:
                    sock.recv(4096)
                    refused.add(i)  # closed or answered: refused after all
                except BlockingIOError:
                    pass
                except OSError:
                    refused.add(i)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    for i in refused:
        socks[i].close()
    return [sock for i, sock in enumerate(socks) if i not in refused], refusals


def wait_served(server: ServerProcess, source: str | None = None) -> None:
    deadline, status = time.monotonic() + 10, None
    while time.monotonic() < deadline and status != 200:
        status = send(server, b"GET /api/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", source)
        time.sleep(0.2)
    assert status == 200


def test_1100_held_connections_are_not_all_accepted(limited):
    n = 1100
    sources = [f"127.0.1.{1 + i % 200}" for i in range(n)]  # 200 clients, under their per-client cap each
    held, refusals = hold(limited, sources, n - MAX_CONNECTIONS)
    try:
        assert len(held) <= MAX_CONNECTIONS, f"{len(held)} connections held open; the cap is {MAX_CONNECTIONS}"
        assert len(refusals) >= n - MAX_CONNECTIONS
        assert all(r.get("max_connections") == MAX_CONNECTIONS for r in refusals if r)
    finally:
        for sock in held:
            sock.close()
    wait_served(limited)  # once they are gone, the server serves again


def test_one_client_cannot_take_every_connection(limited):
    n = PER_CLIENT + 10
    held, refusals = hold(limited, ["127.0.2.1"] * n, n - PER_CLIENT)
    try:
        assert len(held) == PER_CLIENT, len(held)
        assert all(r.get("max_connections_per_client") == PER_CLIENT for r in refusals if r)
        wait_served(limited, source="127.0.2.2")  # another client is served meanwhile
    finally:
        for sock in held:
            sock.close()
    wait_served(limited, source="127.0.2.1")


def test_a_trusted_proxy_has_no_per_client_cap(proxied):
    n = PER_CLIENT + 6
    held, refusals = hold(proxied, ["127.0.0.1"] * n, 0)  # the proxy: every connection kept ...
    try:
        assert len(held) == n and refusals == []
        for sock in held:  # ... and served
            sock.setblocking(True)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: t\r\n\r\n")
            assert status_of(read_one_response(sock)) == 200
    finally:
        for sock in held:
            sock.close()
    held, refusals = hold(proxied, ["127.0.0.2"] * n, n - PER_CLIENT)  # not the proxy: capped
    for sock in held:
        sock.close()
    assert len(held) == PER_CLIENT


# ---- the flags themselves


@pytest.mark.slow  # a process importing torch: ~10 s on a loaded 2-core machine
def test_a_bad_limit_is_a_one_line_error(serve_checkpoint: Path):
    cmd = [sys.executable, "-m", "embergpt", "serve", "--checkpoint", str(serve_checkpoint), "--port", "0"]
    result = subprocess.run([*cmd, "--header-timeout", "nan"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--header-timeout" in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("flags", "environ", "named"),
    [
        ({}, {"EMBERGPT_MAX_CONNECTIONS": "0"}, "EMBERGPT_MAX_CONNECTIONS"),
        ({}, {"EMBERGPT_BODY_TIMEOUT": "inf"}, "EMBERGPT_BODY_TIMEOUT"),
        ({"keep_alive_timeout": -1.0}, {}, "--keep-alive-timeout"),
        ({"max_header_bytes": 10}, {}, "--max-header-bytes"),
        ({"forwarded_allow_ips": "proxy.example"}, {}, "--forwarded-allow-ips"),
        ({}, {"EMBERGPT_FORWARDED_ALLOW_IPS": "10.0.0.1, nonsense"}, "EMBERGPT_FORWARDED_ALLOW_IPS"),
    ],
)
def test_bad_http_settings_name_their_source(flags, environ, named):
    with pytest.raises(ValueError, match=named):
        resolve_settings(flags, environ)


def test_http_settings_resolve_and_reach_uvicorn(monkeypatch):
    s = resolve_settings({"header_timeout": 3.5}, {"EMBERGPT_FORWARDED_ALLOW_IPS": "10.0.0.1, 192.168.0.0/16"})
    assert (s.header_timeout, s.trusted_proxies) == (3.5, ["10.0.0.1", "192.168.0.0/16"])
    config = uvicorn_config(lambda *a: None, s)
    assert config.proxy_headers and config.forwarded_allow_ips == ["10.0.0.1", "192.168.0.0/16"]
    assert config.http.limits.header_timeout == 3.5 and config.ws == "none"
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # uvicorn's own variable: not read
    default = uvicorn_config(lambda *a: None, resolve_settings({}, {}))
    assert not default.proxy_headers and default.forwarded_allow_ips == []


@pytest.mark.parametrize("name", ["max_prompt_bytes", "max_output_tokens", "rate_limit_rps", "rate_limit_burst",
                                  "max_batch", "max_queue", "max_attention_tokens", "max_header_bytes",
                                  "max_connections", "max_connections_per_client"])
def test_every_number_has_an_upper_bound(name):
    """2**63 (from a typo or a hostile environment) is refused naming its source, for every limit; the bound itself
    is accepted, so a server can be configured right up to it."""
    from embergpt.serve.settings import MAXIMA

    env = "EMBERGPT_" + name.upper()
    with pytest.raises(ValueError, match=env) as e:
        resolve_settings({}, {env: str(2**63)})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="--" + name.replace("_", "-")):
        resolve_settings({name: MAXIMA[name] * 2}, {})
    top = MAXIMA[name] if name == "rate_limit_rps" else int(MAXIMA[name])
    assert getattr(resolve_settings({name: top}, {}), name) == top


@pytest.mark.parametrize("host", ["999.1.1.1", "", "a" * 100 + ".example", "bad\x00host"])
def test_a_host_that_cannot_be_bound_is_one_line(host):
    from embergpt.serve.server import resolve_host

    with pytest.raises(ValueError, match="cannot resolve host") as e:
        resolve_host(host, 0)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400
    assert resolve_host("127.0.0.1", 0)[1][0] == "127.0.0.1"


def test_a_bad_host_is_refused_before_the_network_warning(tmp_path):
    """The warning about a non-loopback --host came first, then the error: two lines for one mistake."""
    from hostile import assert_one_line_error, run_cli, tiny_checkpoint

    result = run_cli("serve", "--checkpoint", str(tiny_checkpoint(tmp_path / "ckpt")), "--host", "999.1.1.1",
                     "--port", "0", "--compile", "off")
    assert_one_line_error(result, "cannot resolve host '999.1.1.1'", "127.0.0.1")
