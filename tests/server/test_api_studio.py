"""sdstudio's /api routes: jobs (queue, SSE, cancel), history, files, security, restart."""

from __future__ import annotations

import json
import os
import time

import pytest
from fastapi import APIRouter, Request
from fastapi.testclient import TestClient

from sdstudio.api import ServerSettings, create_app, parse_api_auth
from sdstudio.errors import SDStudioError
from sdstudio.runtime.manager import ModelManager
from tests.server.conftest import FAST, TEST_HOSTS, wait_job

SLOW_JOB = {**FAST, "steps": 150, "n_iter": 3}  # long enough to cancel while running


def _submit(client, client_id: str, **body):
    r = client.post("/api/jobs/txt2img", json={**FAST, **body}, headers={"X-Client-Id": client_id})
    assert r.status_code == 202, r.text
    return r.json()


def test_job_lifecycle_images_and_history(client):
    job = _submit(client, "alice", prompt="studio job", seed=42, n_iter=2)
    assert job["state"] in ("queued", "running") and job["client"] == "alice"
    done = wait_job(client, job["id"])
    assert done["state"] == "done" and done["progress"] == 1.0
    assert [im["seed"] for im in done["images"]] == [42, 43]
    assert done["job_steps"] == 4 and done["batch_count"] == 2
    for im in done["images"]:
        r = client.get(im["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        item = client.get(f"/api/history/{im['history_id']}").json()
        assert item["job_id"] == job["id"] and item["seed"] == im["seed"] and item["prompt"] == "studio job"
    listed = client.get("/api/jobs").json()
    assert job["id"] in [j["id"] for j in listed["jobs"]]


def test_sse_stream_reports_progress_until_final(client):
    job = _submit(client, "sse", seed=5, steps=4)
    events = []
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    assert events[-1]["state"] == "done" and len(events[-1]["images"]) == 1
    steps = [e["job_step"] for e in events]
    assert steps == sorted(steps) and max(steps) == 4


def test_two_clients_cancel_one_other_finishes(client):
    """Client A's long job is interrupted and its queued job cancelled; client B's job still finishes."""
    a_running = _submit(client, "A", **SLOW_JOB, seed=1)
    deadline = time.time() + 30
    while client.get(f"/api/jobs/{a_running['id']}").json()["job_step"] < 1 and time.time() < deadline:
        time.sleep(0.02)
    a_queued = _submit(client, "A", seed=2)
    a_queued2 = _submit(client, "A", seed=3)
    b_job = _submit(client, "B", seed=4)
    # fair order: B's job runs before A's second and third jobs although it came last
    assert client.get(f"/api/jobs/{b_job['id']}").json()["position"] == 0
    assert client.get(f"/api/jobs/{a_queued2['id']}").json()["position"] == 2
    assert client.post(f"/api/jobs/{a_queued['id']}/cancel").json()["state"] == "cancelled"
    assert client.post(f"/api/jobs/{a_queued2['id']}/cancel").json()["state"] == "cancelled"
    client.post(f"/api/jobs/{a_running['id']}/cancel")
    a_final = wait_job(client, a_running["id"])
    b_final = wait_job(client, b_job["id"])
    assert a_final["state"] == "cancelled" and a_final["job_step"] < a_final["job_steps"]
    assert b_final["state"] == "done" and [im["seed"] for im in b_final["images"]] == [4]
    assert client.get("/api/history", params={"job_id": a_queued["id"]}).json()["total"] == 0


def test_a1111_interrupt_and_progress_while_running(client):
    job = _submit(client, "progress", **SLOW_JOB, seed=8)
    deadline = time.time() + 30
    while client.get(f"/api/jobs/{job['id']}").json()["job_step"] < 2 and time.time() < deadline:
        time.sleep(0.02)
    p = client.get("/sdapi/v1/progress").json()
    assert 0 < p["progress"] < 1 and p["state"]["sampling_steps"] == 150 and p["state"]["job_count"] == 3
    assert p["current_image"]  # live preview (base64 PNG)
    assert client.get(f"/api/jobs/{job['id']}/preview").headers["content-type"] == "image/png"
    assert client.post("/sdapi/v1/interrupt").json() == {}
    final = wait_job(client, job["id"])
    assert final["state"] == "cancelled"


def test_gallery_filter_page_delete(client):
    seeds = []
    for i, prompt in enumerate(["gallery zebra", "gallery yak", "gallery zebra two"]):
        seeds.append(wait_job(client, _submit(client, "g", prompt=prompt, seed=500 + i)["id"])["images"][0])
    page = client.get("/api/history", params={"q": "ZEBRA"}).json()
    assert page["total"] == 2 and all("zebra" in it["prompt"] for it in page["items"])
    assert "tiny-sd1" in page["facets"]["models"]
    today = page["items"][0]["day"]
    assert (
        client.get("/api/history", params={"q": "zebra", "date_from": today, "date_to": today}).json()[
            "total"
        ]
        == 2
    )
    assert client.get("/api/history", params={"q": "zebra", "date_to": "2000-01-01"}).json()["total"] == 0
    assert (
        client.get("/api/history", params={"q": "gallery", "sampler": "Euler", "model": "tiny-sd1"}).json()[
            "total"
        ]
        == 3
    )
    assert client.get("/api/history", params={"date_from": "yesterday"}).status_code == 422
    p1 = client.get("/api/history", params={"q": "gallery", "limit": 2}).json()
    p2 = client.get("/api/history", params={"q": "gallery", "limit": 2, "offset": 2}).json()
    assert len(p1["items"]) == 2 and len(p2["items"]) == 1 and p1["total"] == 3
    victim = seeds[1]
    path = client.get(f"/api/history/{victim['history_id']}").json()["path"]
    assert client.delete(f"/api/history/{victim['history_id']}").json()["path"] == path
    assert client.get(victim["url"]).status_code == 404
    assert client.get(f"/api/history/{victim['history_id']}").status_code == 404
    assert client.delete(f"/api/history/{victim['history_id']}").status_code == 404


def test_file_route_only_serves_outputs(client, studio_app, tmp_path):
    outdir = studio_app.state.studio.outdir
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"\x89PNG secret")
    os.symlink(secret, outdir / "link.png")
    (outdir / "notes.txt").write_text("hi")
    for bad in (
        "../secret.png",
        "..%2Fsecret.png",
        "%2Fetc%2Fpasswd",
        "link.png",
        "notes.txt",
        "history.sqlite3",
    ):
        r = client.get(f"/api/images/{bad}")
        assert r.status_code == 404, bad
        assert b"secret" not in r.content


def test_unknown_job_and_models_routes(client):
    assert client.get("/api/jobs/nope").status_code == 404
    models = client.get("/api/models").json()
    assert {m["title"] for m in models["models"]} >= {"tiny", "tiny2"}
    assert client.post("/api/models/select", json={"name": "zzz"}).status_code == 422
    info = client.get("/api/info").json()
    assert info["img2img_available"] is True and "Euler a" in info["samplers"]


# -- security ----------------------------------------------------------------------------


@pytest.fixture
def secured(tmp_path, tiny_sd1):
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=tmp_path / "out",
        models_dir=None,
        api_auth=parse_api_auth("ann:s3cret"),
        max_body_bytes=4096,
    )
    app = create_app(settings, models={"tiny": tiny_sd1})
    with TestClient(app) as c:
        yield c


def test_basic_auth_covers_every_route(secured):
    for path in (
        "/",
        "/static/app.js",
        "/api/history",
        "/api/jobs/x/events",
        "/sdapi/v1/options",
        "/openapi.json",
    ):
        r = secured.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith("Basic")
    assert secured.get("/sdapi/v1/options", auth=("ann", "wrong")).status_code == 401
    assert secured.get("/sdapi/v1/options", auth=("ann", "s3cret")).status_code == 200
    assert "sdstudio" in secured.get("/", auth=("ann", "s3cret")).text


def test_cross_site_requests_are_refused(secured):
    auth = ("ann", "s3cret")
    body = {**FAST, "seed": 1}
    evil = secured.post("/sdapi/v1/txt2img", json=body, auth=auth, headers={"Origin": "http://evil.example"})
    assert evil.status_code == 403 and "cross-site" in evil.json()["detail"]
    fetch = secured.post("/sdapi/v1/interrupt", auth=auth, headers={"Sec-Fetch-Site": "cross-site"})
    assert fetch.status_code == 403
    same = secured.get(
        "/api/info", auth=auth, headers={"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
    )
    assert same.status_code == 200


def test_request_body_limit(secured):
    r = secured.post("/sdapi/v1/png-info", json={"image": "A" * 10000}, auth=("ann", "s3cret"))
    assert r.status_code == 413


def test_parse_api_auth():
    assert parse_api_auth("a:b,c:d:e") == (("a", "b"), ("c", "d:e"))
    with pytest.raises(SDStudioError):
        parse_api_auth("nopassword")


# -- start-up: missing model, restart with damaged gallery -------------------------------


def test_server_starts_without_a_model_and_reports_the_error(tmp_path):
    def failing_loader(path, **kw):
        raise FileNotFoundError("embedded default model is not shipped yet")

    manager = ModelManager(None, loader=failing_loader)
    app = create_app(
        ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None), manager=manager
    )
    with TestClient(app) as c:
        assert c.get("/").status_code == 200
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
        assert r.status_code == 503 and "not shipped yet" in r.json()["detail"]
        assert "not shipped yet" in c.get("/api/models").json()["last_error"]


def test_restart_with_missing_and_corrupt_gallery_files(tmp_path, tiny_sd1):
    settings = ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None)
    with TestClient(create_app(settings, models={"tiny": tiny_sd1})) as c:
        job = wait_job(c, _submit(c, "r", seed=10, n_iter=3)["id"])
        paths = [c.get(f"/api/history/{im['history_id']}").json()["path"] for im in job["images"]]
    out = settings.outdir
    (out / paths[0]).unlink()  # file gone: its row must go
    (out / paths[1]).write_bytes(b"\x89PNG\r\n\x1a\ntruncated")  # corrupt file: kept, reported
    (out / "txt2img-images" / "stray.png").write_bytes((out / paths[2]).read_bytes())  # file without row
    with TestClient(create_app(settings, models={"tiny": tiny_sd1})) as c:
        report = c.get("/api/reconcile").json()
        assert report["removed_rows"] == [paths[0]]
        assert report["added_files"] == ["txt2img-images/stray.png"]
        items = c.get("/api/history").json()["items"]
        assert {it["path"] for it in items} == {paths[1], paths[2], "txt2img-images/stray.png"}
        assert next(it for it in items if it["path"].endswith("stray.png"))["seed"] == 12
    settings.history_db.write_bytes(b"garbage" * 50)  # corrupt database
    with TestClient(create_app(settings, models={"tiny": tiny_sd1})) as c:
        report = c.get("/api/reconcile").json()
        assert report["rebuilt_database"]
        assert c.get("/api/history").json()["total"] == 2  # rebuilt from the readable files


def test_outpaint_and_hires_jobs(client):
    """sdstudio's outpaint margins grow the canvas; hires fix doubles the size (A1111 fields)."""
    import base64
    import io

    from PIL import Image

    from tests.server.conftest import png_b64

    init = Image.new("RGB", (64, 64), (240, 200, 40))
    body = {
        **FAST,
        "seed": 3,
        "init_images": [png_b64(init)],
        "outpaint_right": 32,
        "outpaint_top": 16,
        "mask_blur": 2,
    }
    r = client.post("/api/jobs/img2img", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["id"])
    assert job["state"] == "done", job
    out = Image.open(io.BytesIO(client.get(job["images"][0]["url"]).content)).convert("RGB")
    assert out.size == (96, 80)
    assert out.getpixel((8, 72)) == pytest.approx((240, 200, 40), abs=16)  # original area kept (bottom-left)
    item = client.get(f"/api/history/{job['images'][0]['history_id']}").json()
    assert "Outpaint: " in item["infotext"] and "right=32" in item["infotext"] and item["kind"] == "img2img"
    hires = {
        **FAST,
        "seed": 3,
        "enable_hr": True,
        "hr_scale": 2,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 1,
    }
    r = client.post("/sdapi/v1/txt2img", json=hires)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0])))
    assert image.size == (128, 128) and "Hires upscale: 2" in image.info["parameters"]
    bad = client.post("/sdapi/v1/txt2img", json={**hires, "hr_upscaler": "ESRGAN_4x"})
    assert bad.status_code == 422 and bad.json()["field"] == "hr_upscaler"


def test_extra_routers_get_the_same_protection(tmp_path, tiny_sd1):
    """Routes from above the API (the lab) are mounted with auth and can reach the studio."""
    lab = APIRouter(prefix="/api/lab")

    @lab.get("")
    async def lab_index(request: Request) -> dict:
        return {"experiments": [], "queued": len(request.app.state.studio.queue.pending())}

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None, api_auth=(("a", "b"),)
    )
    with TestClient(create_app(settings, models={"tiny": tiny_sd1}, routers=[lab])) as c:
        assert c.get("/api/lab").status_code == 401
        assert c.get("/api/lab", auth=("a", "b")).json() == {"experiments": [], "queued": 0}
        assert c.get("/api/info", auth=("a", "b")).json()["lab_available"] is True
