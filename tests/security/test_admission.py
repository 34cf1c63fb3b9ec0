"""Admission (issue 33): requests whose cost is out of bounds are refused at submit time, as a 422
naming the field, before anything large is built or decoded."""

from __future__ import annotations

import base64
import io
import json
import math
import os
import time
import tracemalloc

import pytest
from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts import axes as ax
from tests.server.conftest import FAST, png_b64, wait_job


def _xyz(x_type: str, x_values: str) -> dict:
    return {"script_name": "x/y/z plot", "script_args": [x_type, x_values, []]}


@pytest.mark.parametrize(
    "label, text",
    [
        ("Seed", "1-30000000"),
        ("Seed", "1-30000000 (+1)"),
        ("Steps", "1-10 [100000000]"),
        ("CFG Scale", "1-10000000"),
        ("CFG Scale", "0-1 (+0.0000000001)"),
        ("CFG Scale", "1-10 [100000000]"),
        ("Seed", "1-" + "9" * 4300),
        ("CFG Scale", "1-" + "9" * 400),
    ],
)
def test_huge_axis_ranges_are_refused_before_they_are_expanded(label, text):
    axis = ax.find_axis(label)
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(SDStudioError) as err:
            ax.parse_values(axis, text)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value.field == "script_args"
    assert peak < 1_000_000, f"{peak} bytes allocated before the refusal"
    assert elapsed < 0.5


def test_ranges_within_the_cap_still_expand_as_a1111():
    assert ax.parse_values(ax.find_axis("Seed"), "1-5") == [1, 2, 3, 4, 5]
    assert ax.parse_values(ax.find_axis("Steps"), "10-1 (-3)") == [
        10,
        7,
        4,
    ]  # A1111: end + 1 whatever the step
    assert ax.parse_values(ax.find_axis("CFG Scale"), "1-2 [3]") == [1.0, 1.5, 2.0]
    assert len(ax.parse_values(ax.find_axis("Seed"), "1-256")) == 256
    with pytest.raises(SDStudioError):
        ax.parse_values(ax.find_axis("Seed"), "1-257")


@pytest.mark.parametrize(
    "body",
    [
        _xyz("Steps", "2, 100000"),
        _xyz("Size", "64x64, 4096x4096"),
        _xyz("CFG Scale", "7, 1e30"),
        _xyz("CFG Scale", "7, nan"),
        _xyz("Seed", "1-" + "9" * 4300),
        {"enable_hr": True, "hr_scale": 1.0, **_xyz("Hires steps", "2, 100000")},
    ],
)
def test_xyz_axis_values_are_held_to_the_request_limits_at_submit(client, body):
    r = client.post("/api/jobs/txt2img", json={**FAST, **body})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "script_args"
    assert client.get("/api/jobs").json()["queued"] == 0


def test_xyz_values_within_the_limits_are_accepted(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, **_xyz("Steps", "1, 2")})
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1  # the grid


def _png(size: int = 8) -> str:
    return png_b64(Image.new("RGB", (size, size), "red"))


def test_more_init_images_than_the_batch_can_use_are_refused_before_decoding(client, monkeypatch):
    from sdstudio.api import convert

    decoded = []
    real = convert.decode_image
    monkeypatch.setattr(convert, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    body = {**FAST, "batch_size": 2, "init_images": [_png()] * 3}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "init_images" and "at most 2" in r.json()["detail"]
    assert decoded == []
    body = {**FAST, "init_images": [_png()] * 2, "outpaint_left": 8}  # outpainting uses one image
    assert client.post("/sdapi/v1/img2img", json=body).json()["field"] == "init_images"


def test_init_images_up_to_the_batch_size_are_accepted(client):
    body = {**FAST, "batch_size": 2, "init_images": [_png(64), _png(64)], "denoising_strength": 0.5}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 2


def test_and_parts_are_capped(client):
    from sdstudio.prompts.schedule import MAX_AND_PARTS

    too_many = " AND ".join(f"part {i}" for i in range(MAX_AND_PARTS + 1))
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": too_many})
    assert r.status_code == 422 and r.json()["field"] == "prompt", r.text
    assert str(MAX_AND_PARTS) in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a cat AND a hat :" + "9" * 400})
    assert r.status_code == 422 and r.json()["field"] == "prompt", r.text
    # a negative prompt keeps AND as text (A1111), so it is not counted
    body = {**FAST, "prompt": "a AND b", "negative_prompt": too_many}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200


@pytest.mark.parametrize("host", ["[::1]evil.example", "[::1]evil.example:7860", "localhost:x", "local host"])
def test_malformed_host_headers_are_refused(client, host):
    r = client.get("/sdapi/v1/options", headers={"host": host})
    assert r.status_code == 403 and r.json()["field"] == "host", r.text


@pytest.mark.parametrize("host", ["[::1]:7860", "[::1]", "localhost:7860", "127.0.0.1", "testserver"])
def test_well_formed_local_host_headers_are_served(client, host):
    assert client.get("/sdapi/v1/options", headers={"host": host}).status_code == 200


@pytest.mark.parametrize("path", ["/sdapi/v1/loras", "/api/models"])
def test_lora_listing_reads_files_off_the_event_loop(client, monkeypatch, path):
    import asyncio

    from sdstudio.networks.library import NetworkLibrary

    calls = []
    real = NetworkLibrary.files

    def files(self, kind):
        try:
            asyncio.get_running_loop()
            calls.append((kind, "event loop"))
        except RuntimeError:
            calls.append((kind, "worker thread"))
        return real(self, kind)

    monkeypatch.setattr(NetworkLibrary, "files", files)
    assert client.get(path).status_code == 200
    assert ("lora", "worker thread") in calls and not [c for c in calls if c[1] == "event loop"]


@pytest.mark.parametrize(
    "size, args, needle",
    [
        (1100, [None, 64, "Lanczos", 4.0], "pixels"),  # 4400x4400 > --max-image-pixels (4096^2)
        (64, [None, 56, "Lanczos", 4.0], "tiles"),  # 256x256 in 64 px tiles stepping 8 px: 625 tiles
        (64, [None, math.inf, "Lanczos", 2.0], "overlap"),
        (64, [None, 8, "Lanczos", math.nan], "scale_factor"),
    ],
)
def test_sd_upscale_cost_is_checked_before_queueing(client, size, args, needle):
    image = png_b64(Image.new("RGB", (size, size), "red"))
    body = {**FAST, "init_images": [image], "script_name": "sd upscale", "script_args": args}
    r = client.post(
        "/api/jobs/img2img", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["field"] == "script_args", r.text
    assert needle in r.json()["detail"]


def test_a_job_over_the_work_budget_is_refused_with_the_estimate(client):
    from sdstudio.config import Limits

    budget = Limits().job_steps_budget()
    assert budget == 38400  # one batch of 8 at 2048x2048 and 150 steps, with CFG
    body = {**FAST, "width": 2048, "height": 2048, "batch_size": 8, "n_iter": 100, "steps": 150}
    t0 = time.perf_counter()
    r = client.post("/api/jobs/txt2img", json=body)
    assert r.status_code == 422 and r.json()["field"] == "max_job_steps", r.text
    assert "3,840,000 steps" in r.json()["detail"] and "38,400" in r.json()["detail"]
    from sdstudio.config import GenerationRequest
    from sdstudio.runtime.admission import check_work

    largest = GenerationRequest(width=2048, height=2048, batch_size=8, steps=150)  # one batch: within it
    assert check_work(largest, None, Limits()) == budget
    assert time.perf_counter() - t0 < 5
    body = {**FAST, "width": 2048, "height": 2048, "enable_hr": True, "hr_scale": 1.0, "steps": 150,
            "hr_second_pass_steps": 150, "batch_size": 8}  # fmt: skip
    assert client.post("/api/jobs/txt2img", json=body).json()["field"] == "max_job_steps"  # hires counts
    body = {**FAST, "width": 1024, "height": 1024, "batch_size": 8, "steps": 150, **_xyz("Seed", "1-64")}
    r = client.post("/api/jobs/txt2img", json=body)
    assert r.status_code == 422 and "x/y/z plot" in r.json()["detail"], r.text
    assert client.get("/api/jobs").json()["queued"] == 0


def test_and_parts_count_in_the_work(client):
    from sdstudio.config import GenerationRequest
    from sdstudio.runtime.admission import request_work

    one = request_work(GenerationRequest(prompt="a cat", width=512, height=512, steps=10))
    three = request_work(
        GenerationRequest(prompt="a cat AND a hat AND a bat", width=512, height=512, steps=10)
    )
    assert one == 20 and three == 40  # uncond + each part, 10 steps of a 512x512 image


def test_the_work_budget_follows_max_job_steps(tmp_path, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.config import Limits
    from tests.server.conftest import TEST_HOSTS

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=tmp_path / "out",
        preview_interval=0.0,
        limits=Limits(max_job_steps=1),
    )
    app = create_app(settings, models={"tiny": tiny_sd1})
    with TestClient(app) as c:
        assert c.post("/sdapi/v1/txt2img", json=FAST).status_code == 200  # 2 steps at 64x64: 0.06
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "width": 512, "height": 512})
        assert r.status_code == 422 and "(--max-job-steps)" in r.json()["detail"]
    app.state.studio.stop()


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="RSS read from /proc")
def test_init_images_over_the_pixel_budget_are_refused_before_decoding_rss(client, monkeypatch):
    """Three blank 4096x4096 PNGs (~50 KB each, 3 x 48 MB decoded) with batch_size 4: refused from
    their headers; the process's resident memory does not grow by the decoded size meanwhile."""
    import threading

    from sdstudio.api import convert

    big = png_b64(Image.new("RGB", (4096, 4096), "white"))
    assert len(big) < 2_000_000
    loaded = []
    real = convert._load_image
    monkeypatch.setattr(convert, "_load_image", lambda *a: loaded.append(a[1]) or real(*a))
    body = {**FAST, "batch_size": 4, "init_images": [big] * 3}
    peak, stop = [_rss()], threading.Event()

    def sample() -> None:
        for _ in range(2000):  # bounded: at most ~10 s of 5 ms samples
            peak.append(_rss())
            if stop.wait(0.005):
                return

    baseline = _rss()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = client.post("/sdapi/v1/img2img", json=body)
    finally:
        stop.set()
        sampler.join()
    assert r.status_code == 422 and r.json()["field"] == "init_images", r.text
    assert "pixels together" in r.json()["detail"]
    assert loaded == []
    assert max(peak) - baseline < 48 * 1024 * 1024, f"RSS grew {(max(peak) - baseline) >> 20} MiB"


def test_queued_jobs_keep_their_init_images_compressed(client):
    long = client.post("/api/jobs/txt2img", json={**FAST, "steps": 150, "n_iter": 8}).json()["id"]
    blank = png_b64(Image.new("RGB", (1024, 1024), "white"))
    body = {**FAST, "init_images": [blank], "denoising_strength": 0.5}
    waiting = client.post("/api/jobs/img2img", json=body).json()["id"]
    job = client.app.state.studio.queue.get(waiting)
    held = job.request.init_images[0] if job.state == "queued" else None
    client.post(f"/api/jobs/{long}/cancel")
    if held is not None:  # (the long job may have ended already on a fast machine)
        assert isinstance(held, bytes) and len(held) < 100_000  # PNG bytes, not a 3 MB decoded image
    done = wait_job(client, waiting)
    assert done["state"] == "done", done["error"]


def test_a_cmyk_jpeg_init_image_is_accepted_and_runs(client):
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (10, 200, 30, 0)).save(buf, "JPEG")
    body = {**FAST, "init_images": [base64.b64encode(buf.getvalue()).decode()], "denoising_strength": 0.5}
    r = client.post("/api/jobs/img2img", json=body)
    assert r.status_code == 202, r.text  # was 503: "cannot write mode CMYK as PNG" when storing it
    assert wait_job(client, r.json()["id"])["state"] == "done"


def test_sizes_far_over_the_models_native_pixels_are_refused_unless_max_size_is_given(tmp_path, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.cli import build_parser
    from sdstudio.cli.serve import build_settings
    from sdstudio.config import Limits
    from tests.server.conftest import TEST_HOSTS

    parse = build_parser().parse_args
    assert build_settings(parse(["serve", "--outdir", str(tmp_path)])).limits.max_native_factor == 4
    explicit = build_settings(parse(["serve", "--outdir", str(tmp_path), "--max-size", "2048"])).limits
    assert explicit.max_native_factor == 0 and explicit.max_width == 2048

    limits = Limits(max_native_factor=4.0)
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", preview_interval=0.0, limits=limits
    )
    app = create_app(settings, models={"tiny": tiny_sd1})  # native 32x32
    with TestClient(app) as c:
        assert c.post("/sdapi/v1/txt2img", json={**FAST, "width": 64, "height": 64}).status_code == 200
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "width": 128, "height": 64})
        assert r.status_code == 422 and r.json()["field"] == "width", r.text
        assert (
            "8.0 times the model's native 32x32" in r.json()["detail"] and "--max-size" in r.json()["detail"]
        )
        body = {**FAST, "width": 64, "height": 64, "enable_hr": True, "hr_scale": 2.0}
        assert c.post("/sdapi/v1/txt2img", json=body).json()["field"] == "hr_scale"
    app.state.studio.stop()


def test_xyz_checkpoint_names_are_looked_up_at_submit(client):
    body = {**FAST, **_xyz("Checkpoint name", "tiny, nope")}
    r = client.post("/api/jobs/txt2img", json=body)
    assert r.status_code == 422 and r.json()["field"] == "script_args", r.text
    assert "'nope'" in r.json()["detail"]
    assert client.get("/api/jobs").json()["queued"] == 0
