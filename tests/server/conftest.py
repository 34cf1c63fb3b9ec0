"""Server test helpers: an app on tiny real models, PNG helpers, a live uvicorn server."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import pytest
from PIL import Image

TEST_HOSTS = ("testserver",)  # the Host name of fastapi's TestClient (DNS-rebinding check)
FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}


def png_b64(image: Image.Image, prefix: bool = False) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode()
    return f"data:image/png;base64,{data}" if prefix else data


def decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


def wait_job(client, job_id: str, timeout: float = 60.0, headers=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}", headers=headers or {}).json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving an app in a background thread on a free port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started, "uvicorn did not start"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def studio_app(tmp_path_factory, tiny_sd1, tiny_sd2):
    """An app with two in-memory tiny models and an A1111-style models folder."""
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("studio")
    models = root / "models"
    for sub in ("Stable-diffusion", "Lora", "VAE", "embeddings"):
        (models / sub).mkdir(parents=True)
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=models, preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1, "tiny2": tiny_sd2})
    yield app
    app.state.studio.stop()


@pytest.fixture(scope="module")
def client(studio_app):
    from fastapi.testclient import TestClient

    with TestClient(studio_app) as c:
        yield c
