"""ASGI middleware for the server's security defaults: auth, same-origin, body size.

Pure ASGI (not ``BaseHTTPMiddleware``) so it wraps every route the same way: JSON routes,
static files, image files and streaming responses (Server-Sent Events) alike.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Awaitable, Callable
from hmac import compare_digest
from typing import Any

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


async def _send_json(send: Callable, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


class BasicAuthMiddleware:
    """HTTP Basic auth on every request (A1111 ``--api-auth user:pass``); 401 otherwise."""

    def __init__(self, app: ASGIApp, credentials: tuple[tuple[str, str], ...]) -> None:
        self.app = app
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.credentials or self._ok(_header(scope, b"authorization")):
            await self.app(scope, receive, send)
            return
        await _send_json(
            send,
            401,
            {"detail": "Incorrect username or password"},
            [(b"www-authenticate", b'Basic realm="sdstudio"')],
        )

    def _ok(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        ok = False
        for u, p in self.credentials:  # compare every pair: no early exit timing
            ok |= compare_digest(u.encode(), user.encode()) & compare_digest(p.encode(), password.encode())
        return ok


class SameOriginMiddleware:
    """Refuse cross-site requests with 403 (CSRF / DNS-rebinding-style browser attacks).

    A request is refused when its ``Origin`` header is present and is not this server's own
    origin (scheme + Host header), or when ``Sec-Fetch-Site`` says ``cross-site`` or
    ``same-site`` (another port or subdomain). Non-browser clients send neither header.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            reason = self._reason(scope)
            if reason:
                await _send_json(send, 403, {"detail": f"cross-site request refused: {reason}"})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _reason(scope: Scope) -> str | None:
        site = (_header(scope, b"sec-fetch-site") or "").lower()
        if site in ("cross-site", "same-site"):
            return f"Sec-Fetch-Site is {site}"
        origin = _header(scope, b"origin")
        if origin is None:
            return None
        host = _header(scope, b"host") or ""
        scheme = scope.get("scheme", "http")
        if origin.rstrip("/").lower() != f"{scheme}://{host}".lower():
            return f"Origin {origin!r} is not this server"
        return None


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class HostCheckMiddleware:
    """Refuse requests whose ``Host`` is not this server's name: 403 (DNS-rebinding protection).

    A page on ``evil.example`` whose DNS answer switches to 127.0.0.1 talks to this server from
    the browser with ``Host: evil.example`` and an Origin that matches it, so the same-origin check
    alone lets it through. As Jupyter (``local_hostnames``) and Vite (``server.allowedHosts``) do,
    only these Host names are served: loopback names and ``*.localhost``, IP literals (a rebinding
    attack needs a domain name), the bound host, and ``allowed`` (``--allowed-hosts``; ``.lan``
    allows every subdomain of ``lan``, ``*`` allows every name). A request without ``Host``
    (HTTP/1.0 tools, never a browser) is served.
    """

    def __init__(self, app: ASGIApp, allowed: tuple[str, ...] = (), bound_host: str = "") -> None:
        self.app = app
        names = {n.strip().lower().rstrip(".") for n in (*LOOPBACK_NAMES, *allowed) if n.strip()}
        if bound_host and bound_host not in ("0.0.0.0", "::"):
            names.add(f"[{bound_host}]" if ":" in bound_host else bound_host.lower())
        self.names = frozenset(names)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] in ("http", "websocket"):
            host = _header(scope, b"host")
            if host is not None and not self.allows(host):
                name = host_name(host)
                await _send_json(
                    send,
                    403,
                    {
                        "detail": f"Host {host!r} is not allowed (DNS-rebinding protection); "
                        f"if this is your server's name, start it with --allowed-hosts {name}",
                        "field": "host",
                    },
                )
                return
        await self.app(scope, receive, send)

    def allows(self, host: str) -> bool:
        name = host_name(host)
        if not name:
            return False
        if "*" in self.names or name in self.names or name.endswith(".localhost"):
            return True
        if any(n.startswith(".") and (name.endswith(n) or name == n[1:]) for n in self.names):
            return True
        try:
            ipaddress.ip_address(name[1:-1] if name.startswith("[") else name)
        except ValueError:
            return False
        return True


_HOST = re.compile(r"^(?P<name>\[[0-9a-f:.]+\]|[a-z0-9_.-]+)(?::\d{0,5})?$")


def host_name(host: str) -> str:
    """The name part of a Host header, lower-case: ``Example.COM:7860`` -> ``example.com``,
    ``[::1]:7860`` -> ``[::1]``; "" (refused) for anything that is not ``name[:port]`` (RFC 9110
    ``uri-host [ ":" port ]``), e.g. ``[::1]evil.example`` or ``localhost:x``."""
    host = host.strip().lower()
    if host.count(":") > 1 and not host.startswith("["):  # a bare IPv6 literal (no brackets, no port)
        return host if _is_ip(host) else ""
    match = _HOST.match(host)
    return match.group("name").rstrip(".") if match else ""


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BodyLimitMiddleware:
    """413 for request bodies over ``max_bytes`` (by Content-Length, and counted while streaming)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await _send_json(send, 413, {"detail": f"request body over the limit of {self.max_bytes} bytes"})
            return
        seen = 0
        started = False

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _body_error()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await _send_json(
                    send, 413, {"detail": f"request body over the limit of {self.max_bytes} bytes"}
                )


class _BodyTooLarge(Exception):
    """Raised from ``receive``; Starlette turns the HTTPException subclass into a 413 response."""


def _body_error() -> Exception:
    from starlette.exceptions import HTTPException

    class BodyTooLarge(_BodyTooLarge, HTTPException):
        pass

    return BodyTooLarge(status_code=413, detail="request body over the limit")
