"""Bounded load: 8 clients on a live server. Zero 5xx, every accepted job ends exactly once, RSS
and open files flat after warm-up. ``SDSTUDIO_LOAD_SECONDS`` (default 8 s; the slow test: 120 s).
Latencies are printed (figures come from ``bench/reliability_load.py``, never asserted here)."""

from __future__ import annotations

import os
import time

import pytest

from tests.faults.load import run_load
from tests.server.conftest import LiveServer

pytestmark = pytest.mark.faults


def _all_history(http) -> list[dict]:
    """Every history row, page by page (a fast machine finishes more jobs than one page holds)."""
    items: list[dict] = []
    while True:
        page = http.get("/api/history", params={"limit": 500, "offset": len(items)}).json()
        items += page["items"]
        if not page["items"] or len(items) >= page["total"]:
            return items


def _check(app, seconds: float, submit_share: float = 0.3) -> None:
    import httpx

    with LiveServer(app) as live:
        report = run_load(live.url, seconds, submit_share=submit_share)
        with httpx.Client(base_url=live.url, timeout=60) as http:
            deadline = time.time() + 300
            while (
                http.get("/api/jobs?limit=1").json()["queued"]
                or http.get("/sdapi/v1/progress").json()["state"]["job"]
            ):
                assert time.time() < deadline, "queue did not drain"
                time.sleep(0.2)
            jobs = {j: http.get(f"/api/jobs/{j}").json() for j in report.accepted}
            history = _all_history(http)
    print("\n" + report.summary())
    assert report.requests > 50 and not [s for s in report.status if s >= 500], report.status
    assert report.accepted and all(j["state"] in ("done", "failed", "cancelled") for j in jobs.values())
    rows = {}
    for item in history:
        rows[item["job_id"]] = rows.get(item["job_id"], 0) + 1
    for job_id, job in jobs.items():  # exactly once: one final state, one image, one history row
        if job["state"] == "done":
            assert len(job["images"]) == 1 and rows.get(job_id) == 1, job
    samples = report.samples
    warm = samples[len(samples) // 3]
    end = samples[-1]
    assert end[2] - warm[2] <= 8, f"open files grew from {warm[2]} to {end[2]}"
    assert end[1] - warm[1] < 150 * 2**20, f"RSS grew by {(end[1] - warm[1]) / 2**20:.0f} MiB"


def test_eight_clients_short(studio_app):
    _check(studio_app, float(os.environ.get("SDSTUDIO_LOAD_SECONDS", "8")), submit_share=0.05)


@pytest.mark.slow
def test_eight_clients_two_minutes(tmp_path, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    app = create_app(ServerSettings(outdir=tmp_path / "out", models_dir=None), models={"tiny": tiny_sd1})
    _check(app, 120.0)
    app.state.studio.stop()
