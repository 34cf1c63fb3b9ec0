"""History store: rows, filters, paging, delete (file + row), safe paths, reconcile, corrupt DB."""

from __future__ import annotations

import os
import sqlite3

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from sdstudio.errors import SDStudioError
from sdstudio.runtime.history import HistoryStore, ImageRecord, safe_join


def _png(path, text: str, size=(16, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", size, "blue").save(path, pnginfo=info)
    return path


INFOTEXT = "a red fox\nNegative prompt: blurry\nSteps: 12, Sampler: Euler a, CFG scale: 6.5, Seed: 77, Size: 16x8, Model hash: abcdef0123, Model: tiny-sd1"


@pytest.fixture
def store(tmp_path):
    s = HistoryStore(tmp_path / "out" / "history.sqlite3", tmp_path / "out")
    yield s
    s.close()


def _add(store, rel, **kw):
    path = _png(store.outdir / rel, kw.pop("text", INFOTEXT))
    rec = ImageRecord(path=rel, file_size=path.stat().st_size, **kw)
    return store.add(rec)


def test_wal_mode_and_roundtrip(store):
    rec = _add(
        store,
        "txt2img-images/2026-01-02/00001-5.png",
        prompt="a cat",
        seed=5,
        sampler="Euler",
        model_name="m1",
    )
    mode = store._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    got = store.get(rec.id)
    assert (got.prompt, got.seed, got.sampler, got.day) == ("a cat", 5, "Euler", got.day)
    assert len(got.day) == 10


def test_filters_and_paging(store):
    for i in range(7):
        _add(
            store,
            f"txt2img-images/d/{i:05d}.png",
            prompt=f"{'red' if i % 2 else 'blue'} 100%_fox {i}",
            sampler="Euler" if i < 4 else "DDIM",
            model_name="m1" if i < 5 else "m2",
            model_hash="h1" if i < 5 else "h2",
            created_at=1_700_000_000 + i * 86400,
        )
    rows, total = store.query(text="RED")
    assert total == 3 and all("red" in r.prompt for r in rows)
    rows, total = store.query(text="100%_")  # LIKE wildcards are literal
    assert total == 7
    assert store.query(text="0%x")[1] == 0
    assert store.query(model="m2")[1] == 2 and store.query(model="h1")[1] == 5
    assert store.query(sampler="DDIM", model="m1")[1] == 1
    page1, total = store.query(limit=3)
    page2, _ = store.query(limit=3, offset=3)
    assert total == 7 and len(page1) == 3 and not {r.id for r in page1} & {r.id for r in page2}
    assert page1[0].created_at > page1[-1].created_at  # newest first
    day = page1[1].day
    assert all(r.day >= day for r in store.query(date_from=day)[0])
    assert all(r.day <= day for r in store.query(date_to=day)[0])
    assert set(store.facets()["models"]) == {"m1", "m2"}


def test_delete_removes_file_and_row(store):
    rec = _add(store, "txt2img-images/x/00001-1.png")
    path = store.outdir / rec.path
    assert path.exists()
    assert store.delete(rec.id).path == rec.path
    assert not path.exists() and store.get(rec.id) is None
    assert store.delete(rec.id) is None


def test_safe_join_refuses_escapes(tmp_path):
    root = tmp_path / "out"
    (root / "a").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "a" / "link.png")
    assert safe_join(root, "a/ok.png") == (root / "a" / "ok.png").resolve()
    for bad in ("../secret.png", "/etc/passwd", "a/../../secret.png", "a/link.png", "", "a\\..\\x"):
        assert safe_join(root, bad) is None, bad


def test_reconcile_missing_extra_and_corrupt_files(store):
    kept = _add(store, "txt2img-images/d/00001-1.png")
    gone = _add(store, "txt2img-images/d/00002-2.png")
    (store.outdir / gone.path).unlink()
    _png(store.outdir / "txt2img-images/d/00003-77.png", INFOTEXT)  # file without row
    (store.outdir / "txt2img-images/d/00004-9.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (store.outdir / "txt2img-images/d/.tmp-00005.png").write_bytes(b"partial")
    report = store.reconcile()
    assert report.removed_rows == [gone.path]
    assert report.added_files == ["txt2img-images/d/00003-77.png"]
    assert report.unreadable == ["txt2img-images/d/00004-9.png"]
    added = store.get_by_path("txt2img-images/d/00003-77.png")
    assert (added.prompt, added.negative_prompt, added.seed, added.steps) == ("a red fox", "blurry", 77, 12)
    assert (added.sampler, added.model_name, added.model_hash, added.kind) == (
        "Euler a",
        "tiny-sd1",
        "abcdef0123",
        "txt2img",
    )
    assert added.cfg_scale == 6.5 and (added.width, added.height) == (16, 8)
    assert store.get(kept.id) is not None
    assert store.reconcile().added_files == []  # idempotent


def test_corrupt_database_is_moved_aside_and_rebuilt(tmp_path):
    out = tmp_path / "out"
    _png(out / "txt2img-images/d/00001-77.png", INFOTEXT)
    db = out / "history.sqlite3"
    db.write_bytes(b"this is not a sqlite database" * 100)
    store = HistoryStore(db, out)
    report = store.reconcile()
    assert report.rebuilt_database and os.path.exists(report.rebuilt_database)
    assert report.added_files == ["txt2img-images/d/00001-77.png"]
    assert store.query()[1] == 1
    store.close()
    with sqlite3.connect(db) as conn:  # the new file is a valid database
        assert conn.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 1


def test_a_locked_database_is_an_error_and_never_moved_aside(tmp_path, monkeypatch):
    out = tmp_path / "out"
    db = out / "history.sqlite3"
    HistoryStore(db, out).close()  # a valid database, in use by another server
    before = db.read_bytes()

    def locked(self):
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(HistoryStore, "_connect", locked)
    with pytest.raises(SDStudioError, match="database is locked"):
        HistoryStore(db, out)
    assert db.read_bytes() == before and not list(out.glob("*.corrupt-*"))
