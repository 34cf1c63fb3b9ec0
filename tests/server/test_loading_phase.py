"""While a job's model loads (a first use also converts it: minutes on a CPU) the job says so, in
sdstudio's job view and in A1111's /sdapi/v1/progress textinfo, instead of "Step 0/0"."""

from __future__ import annotations

import threading
import time

from sdstudio.models.save import save_single_file
from sdstudio.runtime.manager import ModelManager
from tests.server.conftest import FAST, TEST_HOSTS


def test_a_loading_model_is_named_in_the_job_and_the_progress(tmp_path, tiny_sd1, monkeypatch):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    path = save_single_file(tiny_sd1, tmp_path / "slow.safetensors")
    release = threading.Event()

    def slow_loader(_path, **_kwargs):
        release.wait(30)  # the model "loads" until the test has seen the phase
        return tiny_sd1

    manager = ModelManager(None, default_model=str(path), loader=slow_loader, backend="torch")
    settings = ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "outputs", preview_interval=0.0)
    app = create_app(settings, manager=manager)
    try:
        with TestClient(app) as client:
            job = client.post(
                "/api/jobs/txt2img", json={**FAST, "width": 32, "height": 32, "prompt": "a cat"}
            ).json()
            deadline = time.time() + 20
            view = client.get(f"/api/jobs/{job['id']}").json()
            while not view["phase"] and time.time() < deadline:
                time.sleep(0.05)
                view = client.get(f"/api/jobs/{job['id']}").json()
            assert view["state"] == "running" and view["phase"] == "Loading slow.safetensors…"
            assert client.get("/sdapi/v1/progress").json()["textinfo"] == "Loading slow.safetensors…"
            release.set()
            while view["state"] == "running" and time.time() < deadline:
                time.sleep(0.05)
                view = client.get(f"/api/jobs/{job['id']}").json()
            assert view["state"] == "done" and view["phase"] == ""
    finally:
        release.set()
        app.state.studio.stop()
