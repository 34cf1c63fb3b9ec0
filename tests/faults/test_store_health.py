"""The job database breaking under a running server (issue 33): nothing acknowledged is lost.

Before a job is acknowledged the studio checks that the database is still the file it opened and
still an sdstudio database. When it was overwritten, replaced or deleted with the outputs folder,
the database is opened anew (a broken file moved aside) and every job the queue knows is written
back, queued ones with their requests, so a restart still runs them; when that is impossible new
jobs get 503 with the reason instead of a 202 for a job a restart would lose. History reads of a
broken database answer 503, not 500.
"""

from __future__ import annotations

import shutil
import sqlite3
import time

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import FAST, TEST_HOSTS, wait_job

LONG = {**FAST, "steps": 150, "n_iter": 6}


def _app(tmp_path, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None, preview_interval=0.0
    )
    return create_app(settings, models={"tiny": tiny_sd1}), settings.history_db


def _overwrite(db, out):
    db.write_bytes(b"not a database " * 100)


def _replace(db, out):
    other = db.with_name("other.sqlite3")
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    other.replace(db)


def _delete_outputs(db, out):
    shutil.rmtree(out)


def _submit(c, prompt: str, **body) -> str:
    r = c.post("/api/jobs/txt2img", json={**FAST, "prompt": prompt, **body})
    assert r.status_code == 202, r.text
    return r.json()["id"]


@pytest.mark.parametrize("damage", [_overwrite, _replace, _delete_outputs])
def test_acknowledged_jobs_survive_a_broken_database_and_a_restart(tmp_path, tiny_sd1, damage):
    app, db = _app(tmp_path, tiny_sd1)
    with TestClient(app) as c:
        first = _submit(c, "first")
        assert wait_job(c, first)["state"] == "done"
        running = _submit(c, "long", **LONG)
        deadline = time.monotonic() + 30
        while c.get(f"/api/jobs/{running}").json()["state"] == "queued" and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = _submit(c, "queued before the damage")
        damage(db, tmp_path / "out")
        after = _submit(c, "queued after the damage")  # the store is rebuilt before this is acknowledged
        assert c.get(f"/api/jobs/{queued}").json()["state"] == "queued"
    app.state.studio.stop()  # queued durable jobs stay queued on disk

    app, _ = _app(tmp_path, tiny_sd1)
    with TestClient(app) as c:
        assert c.get(f"/api/jobs/{first}").json()["state"] == "done"
        assert c.get(f"/api/jobs/{running}").json()["state"] in ("failed", "cancelled")
        done = [wait_job(c, job_id, timeout=120) for job_id in (queued, after)]
        assert [j["state"] for j in done] == ["done", "done"], [j["error"] for j in done]
        assert [j["prompt"] for j in done] == ["queued before the damage", "queued after the damage"]
    app.state.studio.stop()


def test_a_store_that_cannot_be_rebuilt_refuses_new_jobs_with_503(tmp_path, tiny_sd1):
    app, _ = _app(tmp_path, tiny_sd1)
    with TestClient(app) as c:
        assert wait_job(c, _submit(c, "first"))["state"] == "done"
        shutil.rmtree(tmp_path / "out")
        (tmp_path / "out").write_text("a file where the outputs folder was")
        r = c.post("/api/jobs/txt2img", json=FAST)
        assert r.status_code == 503, r.text
        assert "deleted" in r.json()["detail"] and "could not be rebuilt" in r.json()["detail"]
        assert c.post("/sdapi/v1/txt2img", json=FAST).status_code == 503
    app.state.studio.stop()


def test_history_reads_of_an_overwritten_database_are_503_not_500(tmp_path, tiny_sd1):
    app, db = _app(tmp_path, tiny_sd1)
    with TestClient(app) as c:
        assert wait_job(c, _submit(c, "first"))["state"] == "done"
        for suffix in ("", "-wal", "-shm"):
            p = db.with_name(db.name + suffix)
            if p.exists():
                p.write_bytes(b"\0garbage" * 4096)
        r = c.get("/api/history")
        assert r.status_code == 503, r.text
        assert "history database" in r.json()["detail"]
    app.state.studio.stop()
