"""HTTP limits enforced on the connection, before a request reaches the app.

uvicorn has an idle keep-alive timeout (`timeout_keep_alive`), but with httptools it has no cap on header bytes, no
deadline for receiving the headers or the body, none for a client that stops reading its answer, and it accepts every
connection. `limited_protocol(limits)` returns uvicorn's httptools protocol with those limits added:

    limit              answer (always followed by closing the connection)
    max_header_bytes   431 {"error": "headers_too_large"} once the request line + headers pass the cap
    header_timeout     408 {"error": "request_timeout"} when the headers are not complete this long after the
                       connection opened or the request's first byte arrived
    body_timeout       408 {"error": "request_timeout"} when the body is not complete this long after the headers
    max_connections    503 {"error": "too_many_connections"} to every connection beyond the cap, at once
    max_connections_per_client   the same beyond this many connections from one address (so that one client cannot
                       take every slot); a trusted proxy (forwarded_allow_ips) carries many clients and has no cap
    send_timeout       the connection is dropped when the answer has waited this long for the client to read it
                       (the server's write buffer stayed full), so a client that never reads cannot hold it forever

After an error answer the connection is half-closed and what the client still sends is discarded (never stored) for
at most LINGER_SECONDS (BUSY_LINGER_SECONDS for a connection over the cap, which must give its slot back soon), so
that the client can read the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

LINGER_SECONDS = 1.0
BUSY_LINGER_SECONDS = 0.2


@dataclass(frozen=True)
class HttpLimits:
    """Connection-level limits (bytes, seconds, connections); see the module docstring for what each does."""

    max_header_bytes: int = 32768
    header_timeout: float = 10.0
    body_timeout: float = 15.0
    max_connections: int = 512
    send_timeout: float = 30.0
    max_connections_per_client: int = 64
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks, or "*": exempt from the per-client cap

    @classmethod
    def from_settings(cls, settings: Any) -> HttpLimits:
        """The HTTP limits of a ServeSettings."""
        return cls(
            max_header_bytes=settings.max_header_bytes,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_connections=settings.max_connections,
            send_timeout=settings.send_timeout,
            max_connections_per_client=settings.max_connections_per_client,
            trusted_proxies=tuple(settings.trusted_proxies),
        )

    def exempt(self, host: str) -> bool:
        """Whether connections from `host` are exempt from the per-client cap (it is a trusted proxy)."""
        if "*" in self.trusted_proxies:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in ipaddress.ip_network(net, strict=False) for net in self.trusted_proxies)


def error_bytes(status: int, kind: str, message: str, **details: Any) -> bytes:
    """A complete HTTP/1.1 response with the server's JSON error shape and `Connection: close`."""
    body = json.dumps({"error": kind, "message": message, **details}, separators=(",", ":")).encode("ascii")
    head = b"content-type: application/json\r\n" + b"content-length: %d\r\n" % len(body) + b"connection: close\r\n\r\n"
    return STATUS_LINE[status] + head + body


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus `limits` (set on the subclass made by `limited_protocol`)."""

    limits: ClassVar[HttpLimits] = HttpLimits()
    open_per_client: ClassVar[dict[str, int]] = {}  # one dict per server: each limited_protocol() makes its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._send_deadline: asyncio.TimerHandle | None = None  # armed while the write buffer is full
        self._reading_headers = True  # until the current request's headers are complete
        self._header_bytes = 0  # bytes received for the current request's line and headers
        self._refused = False  # an error answer was sent: discard input until the connection closes
        self._counted_as: str | None = None  # the address this connection counts against

    # ---- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        cap = self.limits.max_connections
        if len(self.connections) > cap:
            self._refuse(
                503,
                "too_many_connections",
                f"the server holds its maximum of {cap} open connections (--max-connections); retry later",
                linger=BUSY_LINGER_SECONDS,
                max_connections=cap,
            )
            return
        host = self.client[0] if self.client else None
        if host is not None and not self.limits.exempt(host):
            per_client = self.limits.max_connections_per_client
            if self.open_per_client.get(host, 0) >= per_client:
                self._refuse(
                    503,
                    "too_many_connections",
                    f"this address holds its maximum of {per_client} open connections "
                    "(--max-connections-per-client); close some or retry later",
                    linger=BUSY_LINGER_SECONDS,
                    max_connections_per_client=per_client,
                )
                return
            self.open_per_client[host] = self.open_per_client.get(host, 0) + 1
            self._counted_as = host
        self._arm("header")  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._counted_as is not None:
            left = self.open_per_client.get(self._counted_as, 1) - 1
            if left > 0:
                self.open_per_client[self._counted_as] = left
            else:
                self.open_per_client.pop(self._counted_as, None)
            self._counted_as = None
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_deadline is None:
            self._send_deadline = self.loop.call_later(self.limits.send_timeout, self._send_expired)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._send_deadline is not None:
            self._send_deadline.cancel()
            self._send_deadline = None

    def _send_expired(self) -> None:
        self._send_deadline = None
        if not self.transport.is_closing():
            # No answer can reach a client that does not read: drop the connection and its buffered output. The
            # app sees a disconnect (a generation for it is cancelled).
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and forget
        if self._reading_headers:
            if self._deadline is None:
                self._arm("header")  # the first byte of the next request on a kept-alive connection
            room = self.limits.max_header_bytes - self._header_bytes
            if len(data) > room:
                # Feed only what the cap allows: the headers may end inside it, else the request is refused.
                super().data_received(data[:room])
                if self._refused or self.transport.is_closing():
                    return
                if self._reading_headers:
                    self._refuse_header_size()
                    return
                data = data[room:]
            else:
                self._header_bytes += len(data)
        super().data_received(data)

    # ---- parser callbacks

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        self._arm("body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_headers = True
        self._header_bytes = 0
        super().on_message_complete()

    # ---- deadlines and refusals

    def _arm(self, phase: str) -> None:
        self._disarm()
        seconds = self.limits.header_timeout if phase == "header" else self.limits.body_timeout
        self._deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, phase: str, seconds: float) -> None:
        self._deadline = None
        if self._refused or self.transport.is_closing():
            return
        flag = "--header-timeout" if phase == "header" else "--body-timeout"
        self._refuse(
            408,
            "request_timeout",
            f"the request's {'headers' if phase == 'header' else 'body'} did not arrive within {seconds:g} s ({flag})",
            timeout_seconds=seconds,
        )

    def _refuse_header_size(self) -> None:
        cap = self.limits.max_header_bytes
        self._refuse(
            431,
            "headers_too_large",
            f"the request line and headers exceed {cap} bytes (--max-header-bytes)",
            max_header_bytes=cap,
        )

    def _refuse(self, status: int, kind: str, message: str, linger: float = LINGER_SECONDS, **details: Any) -> None:
        """Answer `status` unless an answer to this request is already under way or sent (then the client could take
        ours for the next request's), then half-close and drop all further input."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if self._reading_headers:  # a new request: only a response still being written is in the way
            answered = cycle is not None and cycle.response_started and not cycle.response_complete
        else:  # the body of `cycle`'s request: it may have been answered already (a 404 need not read the body)
            answered = cycle is not None and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the app's receive() now says http.disconnect and its send() is dropped
            cycle.message_event.set()
        if answered or self.transport.is_closing():
            self.transport.close()
            return
        self.transport.write(error_bytes(status, kind, message, **details))
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.flow.resume_reading()  # keep draining, so that closing later sends FIN, not a reset
        self.loop.call_later(linger, self.transport.close)


def limited_protocol(limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
    """A protocol class for `uvicorn.Config(http=...)` that enforces `limits`."""
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), {"limits": limits, "open_per_client": {}})
