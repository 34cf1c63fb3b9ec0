"""Fault suite: the server fixtures of tests/server (tiny in-memory models, TestClient)."""

from tests.server.conftest import client, studio_app  # noqa: F401 (pytest fixtures)
