"""Prompt studies as queue jobs in the server: /api/lab/study, /api/lab/studies, the report."""

from __future__ import annotations

import pytest

from tests.server.conftest import TEST_HOSTS, wait_job


@pytest.fixture(scope="module")
def lab_client(tmp_path_factory, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.lab.routes import router

    root = tmp_path_factory.mktemp("lab-study")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1}, routers=[router])
    with TestClient(app) as c:
        yield app, c
    app.state.studio.stop()


def test_study_runs_as_a_job_and_serves_json_and_report(lab_client):
    app, client = lab_client
    body = {"kind": "custom", "variants": ["a cat", "a dog"], "seeds": 2, "steps": 1, "sampler_name": "Euler"}
    r = client.post("/api/lab/study", json=body)
    assert r.status_code == 202, r.text
    links = r.json()
    job = wait_job(client, links["id"], timeout=120)
    assert job["state"] == "done", job
    assert job["kind"] == "lab-study" and job["progress"] == 1.0
    data = client.get(links["result"]).json()
    assert [v["prompt"] for v in data["variants"]] == ["a cat", "a dog"] and data["seeds"] == [1, 2]
    assert data["command"].startswith("POST /api/lab/study")
    report = client.get(links["report"])
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert "data:image/png;base64," in report.text and "<script src" not in report.text
    listed = client.get("/api/lab/studies").json()["studies"]
    assert listed[0]["id"] == links["id"] and listed[0]["state"] == "done"
    # study images stay out of the gallery (hidden folder)
    assert not (app.state.studio.outdir / "txt2img-images").exists()
    assert client.get("/api/history").json()["total"] == 0


@pytest.mark.parametrize(
    "body, field",
    [
        ({"kind": "colours"}, "kind"),
        ({"kind": "custom", "variants": ["one"]}, "variants"),
        ({"kind": "word-order", "seeds": 1}, "seeds"),
        ({"kind": "word-order", "sampler_name": "nope"}, "sampler_name"),
    ],
)
def test_bad_study_requests_are_422(lab_client, body, field):
    _, client = lab_client
    r = client.post("/api/lab/study", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_unknown_or_bad_study_ids_are_404(lab_client):
    _, client = lab_client
    assert client.get("/api/lab/studies/" + "0" * 32).status_code == 404
    assert client.get("/api/lab/studies/..%2F..%2Fetc/report").status_code == 404
