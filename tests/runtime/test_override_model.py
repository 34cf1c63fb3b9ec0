"""What a request's ``override_settings`` model does to later requests (A1111 behaviour): by default the
model current before it is restored afterwards; ``override_settings_restore_afterwards: false`` keeps
the request's model for the requests after it."""

from __future__ import annotations

import json

import pytest

from tests.server.conftest import FAST, TEST_HOSTS


@pytest.fixture()
def client(tmp_path, tiny_sd1, tiny_sd2):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    settings = ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "outputs", preview_interval=0.0)
    app = create_app(settings, models={"tiny": tiny_sd1, "tiny2": tiny_sd2})
    with TestClient(app) as c:
        yield c
    app.state.studio.stop()


def _model_of(client, **extra) -> str:
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "width": 32, "height": 32, "seed": 1, **extra})
    assert r.status_code == 200, r.text
    return json.loads(r.json()["info"])["sd_model_name"]


def test_override_model_is_restored_afterwards_by_default(client):
    assert _model_of(client) == "tiny-sd1"  # the default: the first in-memory model
    assert _model_of(client, override_settings={"sd_model_checkpoint": "tiny2"}) == "tiny-sd2"
    assert _model_of(client) == "tiny-sd1"  # not the model the last request loaded
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny"


def test_override_model_stays_when_restore_afterwards_is_false(client):
    body = {"override_settings": {"sd_model_checkpoint": "tiny2"}, "override_settings_restore_afterwards": False}
    assert _model_of(client, **body) == "tiny-sd2"
    assert _model_of(client) == "tiny-sd2"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny2"
