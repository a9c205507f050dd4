"""Running the app with uvicorn on a socket bound here, so that `--port 0` can report the port it got."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import uvicorn

from embergpt.serve.http_limits import HttpLimits, limited_protocol
from embergpt.serve.settings import ServeSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787


def resolve_host(host: str, port: int) -> tuple[int, Any]:
    """(address family, socket address) to listen on for host:port, or a one-line ValueError: checked before the
    model loads (and before any warning about the host is printed), not minutes later at the bind."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as e:  # UnicodeError: a label over 63 characters
        raise ValueError(f"cannot resolve host {host[:100]!r} ({e}); use an IP address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    return family, address


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0 = any free port)."""
    family, address = resolve_host(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def uvicorn_config(app: Any, settings: ServeSettings, log_level: str = "warning") -> uvicorn.Config:
    """uvicorn's configuration for `app` under `settings`: the HTTP limits of embergpt.serve.http_limits, the idle
    keep-alive timeout, and X-Forwarded-For believed only from `settings.forwarded_allow_ips` (uvicorn's own default
    trusts 127.0.0.1 and reads FORWARDED_ALLOW_IPS, which would let any local process pick its rate-limit key)."""
    trusted = settings.trusted_proxies
    return uvicorn.Config(
        app,
        http=limited_protocol(HttpLimits.from_settings(settings)),
        timeout_keep_alive=settings.keep_alive_timeout,  # type: ignore[arg-type]  # call_later takes a float
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted,
        ws="none",  # no WebSocket routes: an Upgrade request is served as plain HTTP, whatever is installed
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


def serve(
    checkpoint: str | Path | None = None,
    load_latest: str | Path | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    settings: ServeSettings | None = None,
    device: str | None = None,
    log_level: str = "warning",
) -> None:
    """Load a checkpoint and serve it until interrupted. Prints `embergpt serve: listening on http://HOST:PORT`."""
    from embergpt.serve.app import create_app_from_checkpoint

    settings = settings or ServeSettings()
    sock = bind_socket(host, port)
    try:
        app = create_app_from_checkpoint(checkpoint, load_latest, settings, device)
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
        print(f"embergpt serve: listening on http://{shown}:{bound[1]}", flush=True)
        uvicorn.Server(uvicorn_config(app, settings, log_level)).run(sockets=[sock])
    finally:
        sock.close()
