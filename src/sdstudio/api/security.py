"""ASGI middleware for the server's security defaults: auth, same-origin, body size.

Pure ASGI (not ``BaseHTTPMiddleware``) so it wraps every route the same way: JSON routes,
static files, image files and streaming responses (Server-Sent Events) alike.
"""

from __future__ import annotations

import base64
import binascii
import json
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
