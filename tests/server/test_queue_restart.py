"""kill -9 loses no accepted job (issue 13 item 7): a real ``sdstudio serve`` killed while jobs wait.

The first server runs one job, starts a long one and has three more queued (one img2img with an
init image) when it gets SIGKILL. The second server on the same outputs folder fails the job that
was running with a reason, runs the three queued ones in their order, and answers
``GET /api/jobs/{id}`` for all of them, also for the one that finished before the kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from PIL import Image

from tests.server.conftest import free_port, png_b64

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler", "seed": 3}


def _serve(tmp_path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from sdstudio.cli import main; sys.exit(main())", "serve",
           "--port", str(port), "--outdir", str(tmp_path / "out"), "--models-dir", str(tmp_path / "models")]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=2)
            return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"server did not start: {proc.communicate(timeout=10)[0][-3000:]}")


def _wait(client: httpx.Client, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_sigkill_with_queued_jobs_then_restart_runs_them(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(tmp_path, port)
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            first = c.post("/api/jobs/txt2img", json={**FAST, "prompt": "before"}).json()["id"]
            assert _wait(c, first, ("done", "failed"))["state"] == "done"
            long = {**FAST, "prompt": "long", "steps": 150, "n_iter": 4}
            running = c.post("/api/jobs/txt2img", json=long, headers={"X-Client-Id": "c1"}).json()["id"]
            init = png_b64(Image.new("RGB", (64, 64), (200, 30, 30)))
            queued = [
                c.post("/api/jobs/txt2img", json={**FAST, "prompt": "q1"}, headers={"X-Client-Id": "c1"}),
                c.post(
                    "/api/jobs/img2img",
                    json={**FAST, "prompt": "q2", "init_images": [init], "denoising_strength": 0.5},
                    headers={"X-Client-Id": "c2"},
                ),
                c.post("/api/jobs/txt2img", json={**FAST, "prompt": "q3"}, headers={"X-Client-Id": "c1"}),
            ]
            ids = [r.json()["id"] for r in queued]
            assert all(r.status_code == 202 and r.json()["state"] == "queued" for r in queued)
            _wait(c, running, ("running",))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

        proc = _serve(tmp_path, port)
        with httpx.Client(base_url=url, timeout=30) as c:
            was_running = c.get(f"/api/jobs/{running}").json()
            assert was_running["state"] == "failed"
            assert was_running["error"] == "server stopped while this job ran"
            done = [_wait(c, i, ("done", "failed", "cancelled")) for i in ids]
            assert [j["state"] for j in done] == ["done"] * 3, [j["error"] for j in done]
            assert [j["prompt"] for j in done] == ["q1", "q2", "q3"]
            assert (
                done[1]["kind"] == "img2img" and "Denoising strength: 0.5" in done[1]["images"][0]["infotext"]
            )
            starts = [j["started_at"] for j in done]
            assert starts == sorted(starts)  # c1, c2, c1: round-robin in submission order
            for job in done:
                image = c.get(job["images"][0]["url"])
                assert image.status_code == 200 and image.content[:8] == b"\x89PNG\r\n\x1a\n"
            before = c.get(f"/api/jobs/{first}").json()  # finished before the kill: from the table
            assert before["state"] == "done" and before["images"][0]["url"].endswith("-3.png")
            assert c.get("/api/jobs/0123456789abcdef").status_code == 404
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
