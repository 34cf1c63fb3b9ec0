"""Omitted knobs take the model's defaults (native size, the card's steps), not A1111's 512x512/50
steps; a size far from the native one is answered with a plain warning (README: deviations from A1111)."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import TEST_HOSTS


@pytest.fixture(scope="module")
def embedded_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("embedded")
    app = create_app(
        ServerSettings(allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=None, precision="fp32")
    )
    with TestClient(app) as client:
        yield client
    app.state.studio.stop()


def test_omitted_size_and_steps_follow_the_embedded_model(embedded_client):
    from sdstudio.models.loader import default_model_path

    declared = json.loads((default_model_path() / "sdstudio.json").read_text())["default_steps"]
    r = embedded_client.post("/sdapi/v1/txt2img", json={"prompt": "cat face", "seed": 1})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"], info["steps"]) == (64, 64, declared)
    assert f"Steps: {declared}," in info["infotexts"][0] and "Size: 64x64" in info["infotexts"][0]
    assert r.json()["warnings"] == []


def test_explicit_values_win_and_far_sizes_warn(embedded_client):
    body = {"prompt": "cat face", "seed": 1, "steps": 1, "width": 256, "height": 64}
    r = embedded_client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"], info["steps"]) == (256, 64, 1)
    (warning,) = r.json()["warnings"]
    assert "width 256" in warning and "native 64x64" in warning and "height" not in warning
    job = embedded_client.get(f"/api/jobs/{r.json()['job_id']}").json()
    assert job["warnings"] == [warning]  # the job's log carries it too


def test_in_memory_model_without_card_keeps_a1111_steps(client):
    """No declared steps: A1111's 50 stays; the size still follows the model (tiny: its native size)."""
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "seed": 1, "n_iter": 1, "steps": 1})
    info = json.loads(r.json()["info"])
    model = client.app.state.studio.manager.acquire("tiny")
    assert (info["width"], info["height"]) == (model.native_size, model.native_size)
