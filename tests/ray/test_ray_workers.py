"""The Ray back end (``sdstudio serve --workers ray``) on a local two-CPU Ray cluster.

Marked ``ray`` and ``slow`` (the default run skips them; they need ``pip install 'sdstudio[ray]'``):

    PYTHONPATH=src:. python3 -m pytest -m ray tests/ray

Two model actors, each loading the embedded tiny model itself; the server saves and records.
"""

from __future__ import annotations

import itertools
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import TEST_HOSTS, png_b64, wait_job

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

FAST = {"width": 64, "height": 64, "steps": 4, "sampler_name": "Euler", "seed": 11}


def _app(root, workers: str, **kw):
    from sdstudio.api import ServerSettings, create_app

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=root / "outputs",
        models_dir=root / "models",
        preview_interval=0.0,
        workers=workers,
        **kw,
    )
    return create_app(settings)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_client(cluster, tmp_path_factory):
    from fastapi.testclient import TestClient

    app = _app(tmp_path_factory.mktemp("ray"), "ray", ray_workers=2)
    with TestClient(app) as client:
        yield client


def _studio(client):
    return client.app.state.studio


def _pixels(client, job: dict) -> list[np.ndarray]:
    return [
        np.asarray(Image.open(_studio(client).outdir / im["url"].removeprefix("/api/images/")))
        for im in job["images"]
    ]


def test_jobs_from_two_clients_run_on_both_workers(ray_client):
    ids = [
        ray_client.post(
            "/api/jobs/txt2img",
            json={**FAST, "prompt": f"p{i}", "steps": 8},
            headers={"X-Client-Id": f"client-{i % 2}"},
        ).json()["id"]
        for i in range(6)
    ]
    jobs = [wait_job(ray_client, i, timeout=180) for i in ids]
    assert [j["state"] for j in jobs] == ["done"] * 6, [j["error"] for j in jobs]
    ran_on = [_studio(ray_client).queue.get(i).worker for i in ids]
    assert set(ran_on) == {"ray-0", "ray-1"}
    spans = sorted((j["started_at"], j["finished_at"]) for j in jobs)
    assert any(b[0] < a[1] for a, b in itertools.pairwise(spans))  # two jobs ran at the same time
    history = ray_client.get("/api/history", params={"job_id": ids[0]}).json()
    assert history["total"] == 1 and history["items"][0]["prompt"] == "p0"  # recorded by the server


def test_same_pixels_as_the_in_process_back_end(ray_client, tmp_path):
    from fastapi.testclient import TestClient

    init = png_b64(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    requests = [
        ("txt2img", {**FAST, "prompt": "a red fox", "batch_size": 2}),
        ("img2img", {**FAST, "prompt": "a blue fox", "init_images": [init], "denoising_strength": 0.6}),
    ]
    with TestClient(_app(tmp_path, "local")) as local:
        for kind, body in requests:
            remote_job = wait_job(
                ray_client, ray_client.post(f"/api/jobs/{kind}", json=body).json()["id"], 180
            )
            local_job = wait_job(local, local.post(f"/api/jobs/{kind}", json=body).json()["id"], 180)
            assert remote_job["state"] == local_job["state"] == "done"
            remote, here = _pixels(ray_client, remote_job), _pixels(local, local_job)
            assert len(remote) == len(here) == len(remote_job["images"]) and len(remote) >= 1
            for a, b in zip(remote, here):
                assert a.shape == b.shape and np.array_equal(a, b)  # same request, same machine: exact
            assert [im["infotext"] for im in remote_job["images"]] == [
                im["infotext"] for im in local_job["images"]
            ]


def _wait_for(client, job_id: str, test, timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if test(job):
            return job
        assert job["state"] in ("queued", "running"), job
        time.sleep(0.02)
    raise AssertionError(f"condition not reached: {job}")


def test_progress_preview_skip_and_cancel_cross_the_boundary(ray_client):
    body = {**FAST, "prompt": "slow", "steps": 100, "n_iter": 3}
    job_id = ray_client.post("/api/jobs/txt2img", json=body).json()["id"]
    job = _wait_for(ray_client, job_id, lambda j: j["step"] >= 2 and j["preview_url"])
    assert ray_client.get(job["preview_url"]).content[:4] == b"\x89PNG"
    assert job["batch_index"] == 0 and job["job_steps"] == 300
    ray_client.post(f"/api/jobs/{job_id}/skip")
    job = _wait_for(ray_client, job_id, lambda j: j["batch_index"] == 1 and j["step"] >= 1)
    assert job["job_step"] < 100 + job["step"] + 10  # batch 0 stopped long before its 100 steps
    ray_client.post(f"/api/jobs/{job_id}/cancel")
    job = wait_job(ray_client, job_id, timeout=60)
    assert job["state"] == "cancelled" and job["job_step"] < 200


def test_killed_worker_fails_its_job_and_is_replaced(ray_client):
    studio = _studio(ray_client)
    job_id = ray_client.post(
        "/api/jobs/txt2img", json={**FAST, "prompt": "doomed", "steps": 100, "n_iter": 4}
    ).json()["id"]
    _wait_for(ray_client, job_id, lambda j: j["step"] >= 1)
    worker = next(w for w in studio.workers if w.name == studio.queue.get(job_id).worker)
    before = worker.replaced
    os.kill(worker.ping()["pid"], signal.SIGKILL)
    job = wait_job(ray_client, job_id, timeout=60)
    assert job["state"] == "failed" and job["error"].startswith(f"worker died: {worker.name}")
    assert worker.replaced == before + 1
    assert not list(studio.outdir.rglob(".tmp-*"))  # nothing half-written
    again = [
        ray_client.post("/api/jobs/txt2img", json={**FAST, "prompt": f"after {i}"}).json()["id"]
        for i in range(3)
    ]
    assert [wait_job(ray_client, i, timeout=180)["state"] for i in again] == ["done"] * 3
    assert ray_client.get("/api/info").status_code == 200
