"""Faults a user meets: broken or full outputs, cancels at every stage, errors and NaN mid-job,
a full queue, a greedy client. The worker must survive each, and the next image must be the same
as one made by a fresh process."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
import time

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.server.conftest import FAST, TEST_HOSTS, wait_job

pytestmark = pytest.mark.faults
SLOW = {**FAST, "steps": 150, "n_iter": 3}  # long enough to act on while it runs


def _app(tmp_path, models, **kw):
    from sdstudio.api import ServerSettings, create_app

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None, preview_interval=0.0, **kw
    )
    return create_app(settings, models=models)


def _submit(c, client_id="a", **body):
    r = c.post("/api/jobs/txt2img", json={**FAST, **body}, headers={"X-Client-Id": client_id})
    assert r.status_code == 202, r.text
    return r.json()


def _pixels_sha(b64_png: str) -> str:
    return hashlib.sha256(
        Image.open(io.BytesIO(base64.b64decode(b64_png))).convert("RGB").tobytes()
    ).hexdigest()


# -- outputs that cannot be written --------------------------------------------------------------


def test_unwritable_outputs_give_a_clear_job_error_and_the_server_stays_up(tmp_path, tiny_sd1):
    from sdstudio.runtime.outputs import images_dir

    with TestClient(_app(tmp_path, {"tiny": tiny_sd1})) as c:
        target = images_dir(tmp_path / "out", "txt2img")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("a file where the day's folder should be")  # works even as root
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1})
        assert r.status_code == 500 and "could not save the image" in r.json()["detail"], r.text
        job = wait_job(c, _submit(c, seed=1)["id"])
        assert job["state"] == "failed" and "outputs folder is writable" in job["error"]
        assert c.get("/api/history").json()["total"] == 0  # no row for an image that was not written
        target.unlink()
        assert c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1}).status_code == 200


def test_full_disk_gives_507_and_no_partial_file(tmp_path, tiny_sd1):
    """A 64 KiB tmpfs as the images folder (needs mount rights: root in a container; else skipped)."""
    from sdstudio.runtime.outputs import images_dir

    target = images_dir(tmp_path / "out", "txt2img")
    target.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(target)], check=False, capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tiny tmpfs here")
    try:
        (target / "filler").write_bytes(b"\0" * 60_000)
        with TestClient(_app(tmp_path, {"tiny": tiny_sd1})) as c:
            r = c.post("/sdapi/v1/txt2img", json={**FAST, "width": 128, "height": 128, "seed": 2})
            assert r.status_code == 507 and "free some disk space" in r.json()["detail"], r.text
            assert sorted(p.name for p in target.iterdir()) == ["filler"]  # no half-written PNG left
            (target / "filler").unlink()
            assert c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 2}).status_code == 200
    finally:
        subprocess.run(["umount", str(target)], check=False)


# -- cancel at every stage ------------------------------------------------------------------------


def test_cancel_at_every_stage(client):
    blocker = _submit(client, "cancel-a", **SLOW, seed=1)
    queued = _submit(client, "cancel-b", seed=2)
    r = client.post(f"/api/jobs/{queued['id']}/cancel").json()  # 1. while queued
    assert r["state"] == "cancelled" and r["images"] == []
    deadline = time.time() + 60
    while client.get(f"/api/jobs/{blocker['id']}").json()["step"] < 2 and time.time() < deadline:
        time.sleep(0.02)
    client.post(f"/api/jobs/{blocker['id']}/cancel")  # 2. mid-sampling, first image
    assert wait_job(client, blocker["id"])["state"] == "cancelled"
    batches = _submit(client, "cancel-a", **{**SLOW, "steps": 20}, seed=3)  # 3. between batches
    deadline = time.time() + 120
    while not client.get(f"/api/jobs/{batches['id']}").json()["images"] and time.time() < deadline:
        time.sleep(0.02)
    client.post(f"/api/jobs/{batches['id']}/cancel")
    done = wait_job(client, batches["id"])
    assert done["state"] == "cancelled" and 1 <= len(done["images"]) < 3  # finished images are kept
    finished = wait_job(client, _submit(client, "cancel-a", seed=4)["id"])  # 4. after it ended: no-op
    again = client.post(f"/api/jobs/{finished['id']}/cancel").json()
    assert finished["state"] == again["state"] == "done" and len(again["images"]) == 1
    assert client.post("/api/jobs/nope/cancel").status_code == 404
    assert wait_job(client, _submit(client, "cancel-a", seed=5)["id"])["state"] == "done"  # worker alive


# -- errors, NaN and OOM injected at step k ------------------------------------------------------


class _FaultAt:
    """A forward pre-hook (torch's public hook API) that makes the UNet's k-th call fail."""

    def __init__(self, k: int, kind: str) -> None:
        self.k, self.kind, self.calls = k, kind, 0

    def __call__(self, module, args, kwargs):
        self.calls += 1
        if self.calls != self.k:
            return None
        if self.kind == "error":
            raise RuntimeError("injected fault")
        if self.kind == "oom":
            raise torch.OutOfMemoryError("injected: out of memory")
        sample = args[0] if args else kwargs["sample"]
        return (torch.full_like(sample, float("nan")), *args[1:]), kwargs


FRESH = """
import base64, hashlib, io, json, sys
from PIL import Image
from fastapi.testclient import TestClient
from sdstudio.api import ServerSettings, create_app
from sdstudio.models.tiny import tiny_sd1
s = ServerSettings(outdir=sys.argv[1], models_dir=None, allowed_hosts=("testserver",))
with TestClient(create_app(s, models={"tiny": tiny_sd1()})) as c:
    r = c.post("/sdapi/v1/txt2img", json=json.loads(sys.argv[2]))
    img = Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).convert("RGB")
    print(hashlib.sha256(img.tobytes()).hexdigest())
"""


def test_worker_survives_injected_faults_and_the_next_image_matches_a_fresh_process(tmp_path):
    from sdstudio.models.tiny import tiny_sd1

    healthy, faulty = tiny_sd1(), tiny_sd1()
    request = {
        **FAST,
        "steps": 4,
        "seed": 77,
        "prompt": "same seed",
        "override_settings": {"sd_model_checkpoint": "tiny"},
    }
    with TestClient(_app(tmp_path, {"tiny": healthy, "faulty": faulty})) as c:
        for kind, k in (("error", 3), ("nan", 2), ("oom", 1)):
            hook = faulty.unet.register_forward_pre_hook(_FaultAt(k, kind), with_kwargs=True)
            try:
                r = c.post(
                    "/sdapi/v1/txt2img",
                    json={**request, "override_settings": {"sd_model_checkpoint": "faulty"}},
                )
            finally:
                hook.remove()
            assert r.status_code in (422, 500, 503), (kind, r.text)
            assert r.json()["detail"], kind
            assert "NaN" in r.json()["detail"] or kind != "nan"
            served = c.post("/sdapi/v1/txt2img", json=request)
            assert served.status_code == 200, served.text
        here = _pixels_sha(served.json()["images"][0])
    fresh = subprocess.run(
        [sys.executable, "-c", FRESH, str(tmp_path / "fresh"), json.dumps(request)],
        check=False, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    assert fresh.stdout.split()[-1] == here  # bit-identical pixels after three failed jobs


# -- queue capacity and fairness -------------------------------------------------------------------


def test_full_queue_is_429_with_retry_after(tmp_path, tiny_sd1):
    with TestClient(_app(tmp_path, {"tiny": tiny_sd1}, max_queue=2)) as c:
        running = _submit(c, "q", **SLOW, seed=1)
        deadline = time.time() + 30
        while c.get(f"/api/jobs/{running['id']}").json()["state"] != "running" and time.time() < deadline:
            time.sleep(0.02)
        waiting = [_submit(c, "q", seed=2), _submit(c, "other", seed=3)]
        r = c.post("/api/jobs/txt2img", json=FAST)
        assert r.status_code == 429 and "queue is full" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        assert c.post("/sdapi/v1/txt2img", json=FAST).status_code == 429
        for job in (running, *waiting):
            c.post(f"/api/jobs/{job['id']}/cancel")
        assert wait_job(c, _submit(c, "q", seed=4)["id"])["state"] == "done"


def test_one_client_over_its_share_of_the_queue_is_429_and_others_still_queue(tmp_path, tiny_sd1):
    app = _app(tmp_path, {"tiny": tiny_sd1}, max_queue=10, max_queue_per_client=2)
    with TestClient(app) as c:
        running = _submit(c, "greedy", **SLOW, seed=1)
        deadline = time.time() + 30
        while c.get(f"/api/jobs/{running['id']}").json()["state"] != "running" and time.time() < deadline:
            time.sleep(0.02)
        waiting = [_submit(c, "greedy", seed=2), _submit(c, "greedy", seed=3)]  # its share: 2 waiting
        r = c.post("/api/jobs/txt2img", json=FAST, headers={"X-Client-Id": "greedy"})
        assert r.status_code == 429 and "this client's share of the queue is full" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        for rotated in ("greedy-2", "greedy-3", ""):  # a new X-Client-Id from the same address: same share
            r = c.post("/api/jobs/txt2img", json=FAST, headers={"X-Client-Id": rotated} if rotated else {})
            assert r.status_code == 429, r.text
        with TestClient(app, client=("10.0.0.2", 50000)) as other:  # another address still gets in
            polite = _submit(other, "polite", seed=4)
            assert polite["state"] == "queued"
        for job in (running, *waiting, polite):
            c.post(f"/api/jobs/{job['id']}/cancel")


def test_one_clients_50_jobs_do_not_starve_anothers_one(client):
    greedy = [_submit(client, "greedy", seed=i, steps=1) for i in range(50)]
    polite = _submit(client, "polite", seed=99, steps=1)
    assert polite["position"] <= 1
    done = wait_job(client, polite["id"], timeout=120)
    greedy_done = [client.get(f"/api/jobs/{j['id']}").json() for j in greedy]
    finished_before = [j for j in greedy_done if j["finished_at"] and j["finished_at"] < done["finished_at"]]
    assert done["state"] == "done" and len(finished_before) <= 2
    for job in greedy:
        client.post(f"/api/jobs/{job['id']}/cancel")
