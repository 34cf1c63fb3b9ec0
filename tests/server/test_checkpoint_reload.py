"""A1111's ``/sdapi/v1/unload-checkpoint`` and ``/sdapi/v1/reload-checkpoint`` on a real models folder:
the loaded model leaves memory, and a checkpoint replaced on disk is read again."""

from __future__ import annotations

import base64
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from sdstudio.models.save import save_single_file
from sdstudio.models.tiny import tiny_sd1
from tests.server.conftest import TEST_HOSTS

FAST = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 7}


def _pixels(client: TestClient) -> np.ndarray:
    r = client.post("/sdapi/v1/txt2img", json=FAST)
    assert r.status_code == 200, r.text
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))


def test_unload_frees_the_model_and_reload_reads_a_replaced_file(tmp_path, monkeypatch):
    from sdstudio.api import ServerSettings, create_app

    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    models = tmp_path / "models"
    checkpoint = save_single_file(tiny_sd1(seed=0), models / "Stable-diffusion" / "tiny.safetensors")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=models, model=str(checkpoint)
    )
    app = create_app(settings)
    manager = app.state.studio.manager
    with TestClient(app) as c:
        first = _pixels(c)
        assert manager.loaded is not None
        assert c.post("/sdapi/v1/unload-checkpoint").json() == {}
        assert manager.loaded is None and manager.loaded_name is None
        assert np.array_equal(_pixels(c), first)  # the next job loads it again: same pixels

        save_single_file(tiny_sd1(seed=1), checkpoint)  # the file is replaced while loaded
        assert np.array_equal(_pixels(c), first)  # still the model in memory
        assert c.post("/sdapi/v1/reload-checkpoint").json() == {}
        assert not np.array_equal(_pixels(c), first)  # read from the new file
    app.state.studio.stop()


def test_a_checkpoint_changed_under_freed_weights_fails_one_job_then_loads_anew(tmp_path, monkeypatch):
    """With OpenVINO the text encoders' weights are freed between jobs and re-read from the file;
    a file replaced meanwhile fails that job (409, never a mix of two checkpoints), and the next job
    loads the new file."""
    import pytest

    pytest.importorskip("openvino")
    from sdstudio.api import ServerSettings, create_app
    from sdstudio.models import loader

    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(loader, "IDLE_TEXT_BYTES", 0)  # the tiny text encoder is freed like SD 1.5's
    models = tmp_path / "models"
    checkpoint = save_single_file(tiny_sd1(seed=0), models / "Stable-diffusion" / "tiny.safetensors")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=models, model=str(checkpoint),
        backend="openvino",
    )  # fmt: skip
    app = create_app(settings)
    with TestClient(app) as c:
        first = _pixels(c)
        assert app.state.studio.manager.loaded.idle_text_encoders.released
        save_single_file(tiny_sd1(seed=1), checkpoint)
        r = c.post("/sdapi/v1/txt2img", json=FAST)
        assert r.status_code == 409 and "changed on disk" in r.json()["detail"]
        assert app.state.studio.manager.loaded is None  # dropped: the next job reads the new file
        assert not np.array_equal(_pixels(c), first)
    app.state.studio.stop()
