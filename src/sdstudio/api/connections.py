"""Connection limits for the HTTP server: slow or idle clients cannot hold the server's sockets.

uvicorn's h11 protocol has a keep-alive timeout after a response, but none before the first
request or while a request's head or body trickles in, and no cap on open connections: about
1,100 half-sent requests ("slowloris") exhaust the process's file descriptors. The protocol here
adds, per connection:

* a deadline for the request head (``head_timeout``, from the connection's first byte or from
  connecting), and a longer one for the body (``body_timeout``): a client that has not sent a
  whole request by then is disconnected (an app still working on a request is never cut);
* a cap on open connections in total and per client address: a connection past either cap is
  answered ``503`` and closed at once.

``uvicorn_options(...)`` gives the keyword arguments ``uvicorn.run`` / ``uvicorn.Config`` take.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0  # request line and headers
BODY_TIMEOUT_S = 120.0  # a request body (a 50 MB upload at 3.5 Mbit/s)
KEEP_ALIVE_S = 30.0  # idle between requests on one connection
MAX_HEAD_BYTES = 16 * 1024  # h11's incomplete-event limit: request line + headers
MAX_PER_CLIENT = 64  # a browser opens ~6 per host; event streams and API scripts add a few

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: 28\r\n\r\ntoo many open connections\r\n\r\n"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The limits one server applies to its connections."""

    head_timeout: float = HEAD_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    max_connections: int = 0  # 0: derived from the file-descriptor limit (default_max_connections)
    max_per_client: int = MAX_PER_CLIENT

    def total(self) -> int:
        return self.max_connections or default_max_connections()


def default_max_connections() -> int:
    """Half the process's soft file-descriptor limit (the rest for model files, the database, logs),
    at most 1024 and at least 32."""
    try:
        import resource
    except ImportError:  # Windows: no getrlimit; its sockets are not file descriptors
        return 1024
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(32, min(1024, soft // 2))


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with request deadlines and connection caps (:class:`ConnectionLimits`)."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = ""
        if self._over_cap():
            transport.write(_BUSY)
            transport.close()
            return
        self._start("head", self.limits.head_timeout)

    def _over_cap(self) -> bool:
        if len(self.connections) > self.limits.total():
            return True
        host = self.client[0] if self.client else None
        same = sum(1 for c in self.connections if c.client and c.client[0] == host)
        return host is not None and same > self.limits.max_per_client

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # (part of) a request head: the clock runs from its first byte
            if self._phase != "head":
                self._start("head", self.limits.head_timeout)
        elif state is h11.SEND_BODY:
            if self._phase != "body":
                self._start("body", self.limits.body_timeout)
        else:  # the whole request is in: the app's time is its own
            self._stop()

    def on_response_complete(self) -> None:
        if self.conn.their_state is h11.SEND_BODY:  # answered before the body came: its deadline holds
            if self._phase != "body":
                self._start("body", self.limits.body_timeout)
        else:
            self._stop()  # idle until the next request: uvicorn's keep-alive timeout applies
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _start(self, phase: str, seconds: float) -> None:
        self._stop()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _stop(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
        self._deadline, self._phase = None, ""

    def _expired(self) -> None:
        self._deadline = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()


def limited_protocol(limits: ConnectionLimits) -> type[LimitedH11Protocol]:
    """The protocol class uvicorn instantiates per connection, bound to ``limits``."""
    return type("LimitedH11Protocol", (LimitedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits | None = None) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments: the limited protocol, keep-alive and head-size limits."""
    limits = limits or ConnectionLimits()
    return {
        "http": limited_protocol(limits),
        "timeout_keep_alive": KEEP_ALIVE_S,
        "h11_max_incomplete_event_size": MAX_HEAD_BYTES,
        "backlog": min(2048, limits.total()),
    }
