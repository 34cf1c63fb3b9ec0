"""The lab's HTTP routes: demolish (forward process) and build (reverse process, via the queue)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import TEST_HOSTS, decode_png, png_b64


@pytest.fixture(scope="module")
def lab_client(tmp_path_factory, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.lab.routes import router

    root = tmp_path_factory.mktemp("lab")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1}, routers=[router])
    with TestClient(app) as c:
        yield c
    app.state.studio.stop()


def test_index_lists_experiments(lab_client):
    names = [e["name"] for e in lab_client.get("/api/lab").json()["experiments"]]
    assert names == ["demolish", "build", "study"]


def test_demolish_strip_goes_from_image_to_noise(lab_client):
    red = Image.new("RGB", (64, 64), (220, 30, 30))
    r = lab_client.post(
        "/api/lab/demolish", json={"image": png_b64(red, prefix=True), "timesteps": "0,500,999"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["labels"] == ["t=0", "t=500", "t=999"]
    strip = np.asarray(decode_png(body["image"]).convert("RGB")).astype(int)
    assert strip.shape[1] == 3 * 128  # three frames, scale 2
    first, last = strip[:128, :128], strip[:128, 256:]
    assert abs(first[..., 0].mean() - 220) < 3 and first[..., 0].std() < 8  # t=0: the image (tiny noise)
    assert last.std() > 40  # t=999 is (almost) pure noise


def test_build_runs_on_the_model_and_returns_two_rows(lab_client):
    r = lab_client.post("/api/lab/build", json={"prompt": "a cat", "steps": 3, "seed": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["labels"]) == 3 and body["info"]["seed"] == 7
    picture = decode_png(body["image"])
    assert picture.width == 3 * 32 * 2 and picture.height > 2 * 32 * 2  # 32 px frames at scale 2; x_t over x0


@pytest.mark.parametrize(
    "path, payload, field",
    [
        ("/api/lab/demolish", {"image": "not base64!!", "timesteps": "0,10"}, "image"),
        ("/api/lab/demolish", {"image": "", "timesteps": "0,10"}, "image"),
        ("/api/lab/build", {"prompt": "x", "steps": 0}, "steps"),
        ("/api/lab/build", {"prompt": "x", "sampler_name": "nope"}, "sampler_name"),
    ],
)
def test_bad_input_is_422_with_the_field(lab_client, path, payload, field):
    r = lab_client.post(path, json=payload)
    assert r.status_code == 422, r.text
    assert field in r.text
