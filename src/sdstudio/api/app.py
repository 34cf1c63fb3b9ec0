"""FastAPI app factory: ``create_app(settings)`` wires the studio, routes, errors and security.

Layers: middleware (Host check -> body limit -> basic auth -> same-origin) wraps everything, including the
static web UI, image files and progress streams. Errors a user can cause come back as 422
JSON ``{"detail": ..., "field": ...}``; nothing returns a stack trace.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from sdstudio import __version__
from sdstudio.api import routes_a1111, routes_studio
from sdstudio.api.deps import PreviewCache
from sdstudio.api.security import (
    BasicAuthMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    SameOriginMiddleware,
)
from sdstudio.api.service import Studio
from sdstudio.api.settings import ServerSettings
from sdstudio.api.text import safe_text
from sdstudio.errors import SDStudioError

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent.parent / "web" / "static"


def create_app(
    settings: ServerSettings | None = None,
    *,
    models: dict[str, Any] | None = None,
    manager: Any = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    """Build the server app; ``models`` registers already-built models by name (tests, embedding).

    ``routers`` adds routes from layers above the API (the lab's ``/api/lab`` router, passed in by
    ``sdstudio serve``); they get the same auth, origin and size checks. Handlers reach the studio
    (queue, models, history) as ``request.app.state.studio``.
    """
    settings = settings or ServerSettings()
    studio = Studio(settings, models=models, manager=manager)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        studio.start()
        try:
            yield
        finally:
            studio.stop()

    app = FastAPI(
        title="sdstudio",
        version=__version__,
        description="Local Stable Diffusion studio: A1111-compatible /sdapi/v1 routes and sdstudio's /api job routes.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI loads from a CDN; /docs serves an offline reference instead
        redoc_url=None,
    )
    app.state.studio = studio
    app.state.preview_cache = PreviewCache()
    studio.start()  # also started by lifespan; idempotent (lets plain TestClient(app) work)
    _install_error_handlers(app)
    app.include_router(routes_a1111.router)
    app.include_router(routes_studio.router)
    for router in routers:
        app.include_router(router)
    _mount_ui(app)
    # outermost first: Host check, size limit, then auth, then origin check
    app.add_middleware(SameOriginMiddleware)
    if settings.api_auth:
        app.add_middleware(BasicAuthMiddleware, credentials=settings.api_auth)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(HostCheckMiddleware, allowed=settings.allowed_hosts, bound_host=settings.host)
    return app


def _mount_ui(app: FastAPI) -> None:
    """The browser UI: ``/`` serves index.html, ``/static`` the rest (no CDN, no build step)."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    async def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "api.html", headers={"Cache-Control": "no-cache"})

    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SDStudioError)
    async def studio_error(request: Request, exc: SDStudioError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if getattr(exc, "retry_after", None) else None
        body = {"detail": safe_text(str(exc)), "field": safe_text(exc.field)}
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [_describe(e) for e in exc.errors()]
        first = errors[0] if errors else {"field": None, "message": "invalid request"}
        return JSONResponse(
            {
                "detail": safe_text("; ".join(e["message"] for e in errors)),
                "field": safe_text(first["field"]),
                "errors": [{k: safe_text(v) for k, v in e.items()} for e in errors],
            },
            status_code=422,
        )

    @app.exception_handler(sqlite3.DatabaseError)
    async def store_error(request: Request, exc: sqlite3.DatabaseError) -> JSONResponse:
        """The history/job database broke under the server (overwritten, deleted, disk full): 503
        with the reason, not an anonymous 500."""
        log.error("database error on %s: %s", request.url.path, exc)
        detail = f"the history database cannot be used ({type(exc).__name__}: {exc}); restart the server"
        return JSONResponse({"detail": safe_text(detail), "field": None}, status_code=503)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(
            {"detail": f"internal error: {type(exc).__name__}", "field": None}, status_code=500
        )


def _describe(error: dict) -> dict:
    """One pydantic error as ``{"field": "steps", "message": "steps: Input should be ... (got 'x')"}``."""
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc) or (error.get("ctx") or {}).get("field")
    if error.get("type") == "lone_surrogate":  # the message names the field already; no input echo
        return {"field": field, "message": error.get("msg", "invalid text")}
    given = error.get("input")
    shown = (
        repr(given)[:80] if isinstance(given, (str, int, float, bool, type(None))) else type(given).__name__
    )
    suffix = f" (got {shown})" if error.get("type") != "missing" else ""
    return {"field": field, "message": f"{field or 'body'}: {error.get('msg', 'invalid')}{suffix}"}
