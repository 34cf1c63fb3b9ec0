"""Small slips a new user meets first (issue 32): upscalers listed once, the model-defaults route the
web UI fills its form from, and an access log that is not a wall of 3-second polls."""

from __future__ import annotations

import logging
import threading
import time
import urllib.request

import pytest

from tests.server.conftest import free_port


def test_upscalers_list_each_name_once(client):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[0] == "None" and len(names) == len(set(names)), names
    assert "Lanczos" in names and not any(n.startswith("Latent") for n in names)


def test_model_defaults_route_names_the_selected_models_defaults(client):
    d = client.get("/api/models/defaults").json()
    assert set(d) == {"size", "steps", "sampler", "cfg_scale"}
    model = client.app.state.studio.manager.acquire("tiny")
    assert d["size"] == model.native_size and d["steps"] is None  # the tiny models declare no card
    assert client.get("/api/models/defaults", params={"name": "tiny2"}).json()["size"] == 32
    r = client.get("/api/models/defaults", params={"name": "no-such-model"})
    assert r.status_code == 422 and "not found" in r.json()["detail"]


def _record(method: str, path: str, status: int) -> logging.LogRecord:
    args = ("127.0.0.1:5000", method, path, "1.1", status)
    return logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None)


@pytest.mark.parametrize(
    ("method", "path", "status", "kept"),
    [
        ("GET", "/api/jobs?limit=1", 200, False),  # the web UI's 3-second queue poll
        ("GET", "/api/jobs/3f2a9c", 200, False),
        ("GET", "/api/jobs/3f2a9c/preview?step=4", 200, False),
        ("GET", "/api/jobs/3f2a9c/events", 200, False),
        ("GET", "/sdapi/v1/progress?skip_current_image=false", 200, False),
        ("GET", "/api/jobs/3f2a9c", 404, True),  # failures are always logged
        ("POST", "/api/jobs/txt2img", 202, True),
        ("POST", "/api/jobs/3f2a9c/cancel", 200, True),
        ("GET", "/api/history?limit=48", 200, True),
        ("GET", "/api/jobsx", 200, True),
    ],
)
def test_poll_filter(method, path, status, kept):
    from sdstudio.cli.access_log import PollFilter

    assert PollFilter().filter(_record(method, path, status)) is kept


def test_polls_are_logged_at_debug():
    from sdstudio.cli.access_log import ACCESS_LOGGER, PollFilter

    logger = logging.getLogger(ACCESS_LOGGER)
    old = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        assert PollFilter().filter(_record("GET", "/api/jobs?limit=1", 200))
    finally:
        logger.setLevel(old)


def test_served_access_log_leaves_polls_out(capfd):
    """A real uvicorn with serve's log config: the submit is logged, the polls are not."""
    import uvicorn
    from fastapi import FastAPI

    from sdstudio.cli.access_log import log_config

    app = FastAPI()

    @app.get("/api/jobs")
    def jobs() -> dict:
        return {}

    @app.post("/api/jobs/txt2img")
    def submit() -> dict:
        return {}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=log_config()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(3):
            urllib.request.urlopen(base + "/api/jobs?limit=1").read()
        urllib.request.urlopen(
            urllib.request.Request(base + "/api/jobs/txt2img", data=b"", method="POST")
        ).read()
        time.sleep(0.2)
    finally:
        server.should_exit = True
        thread.join(10)
    out = capfd.readouterr()
    log = out.out + out.err
    assert "POST /api/jobs/txt2img" in log
    assert "/api/jobs?limit=1" not in log
