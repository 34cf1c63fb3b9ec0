"""The job database breaking under a running server (issue 33): a job is acknowledged only while
its record is durable, so new jobs get 503 with the reason once the database file was
overwritten, replaced or deleted (with the outputs folder), instead of a 202 for a job a restart
would lose; history reads answer 503, not 500."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from fastapi.testclient import TestClient

from tests.server.conftest import FAST, TEST_HOSTS, wait_job


@pytest.fixture
def served(tmp_path, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=None, preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1})
    with TestClient(app) as c:
        first = c.post("/api/jobs/txt2img", json=FAST)
        assert first.status_code == 202
        assert wait_job(c, first.json()["id"])["state"] == "done"
        yield c, settings.history_db, tmp_path / "out"
    app.state.studio.stop()


def _overwrite(db, out):
    db.write_bytes(b"not a database " * 100)


def _replace(db, out):
    other = db.with_name("other.sqlite3")
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    other.replace(db)


def _delete_outputs(db, out):
    shutil.rmtree(out)


@pytest.mark.parametrize(
    "damage, reason",
    [(_overwrite, "overwritten"), (_replace, "replaced"), (_delete_outputs, "deleted")],
)
def test_a_broken_store_refuses_new_jobs_with_503(served, damage, reason):
    c, db, out = served
    damage(db, out)
    r = c.post("/api/jobs/txt2img", json=FAST)
    assert r.status_code == 503, r.text
    assert reason in r.json()["detail"]
    assert c.post("/sdapi/v1/txt2img", json=FAST).status_code == 503
    assert all(j["state"] in ("done", "failed", "cancelled") for j in c.get("/api/jobs").json()["jobs"])


def test_history_reads_of_an_overwritten_database_are_503_not_500(served):
    c, db, _ = served
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            p.write_bytes(b"\0garbage" * 4096)
    r = c.get("/api/history")
    assert r.status_code == 503, r.text
    assert "history database" in r.json()["detail"]


def test_a_healthy_store_keeps_accepting(served):
    c, _, _ = served
    for _ in range(2):
        r = c.post("/api/jobs/txt2img", json=FAST)
        assert r.status_code == 202
        assert wait_job(c, r.json()["id"])["state"] == "done"
