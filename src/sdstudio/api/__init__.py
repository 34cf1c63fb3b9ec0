"""HTTP API: ``create_app(settings)`` builds the FastAPI app (A1111 /sdapi/v1 + sdstudio /api + web UI)."""

from __future__ import annotations

from sdstudio.api.settings import ServerSettings, parse_api_auth


def create_app(*args, **kwargs):
    """Build the app (see :func:`sdstudio.api.app.create_app`); imported lazily to keep import light."""
    from sdstudio.api.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["ServerSettings", "create_app", "parse_api_auth"]
