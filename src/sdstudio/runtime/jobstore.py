"""The queue on disk: a ``jobs`` table in the history database, so a crash loses no accepted job.

Every accepted job gets a row before ``submit`` returns (issue 13 item 7: kill -9 lost every
queued job). A plain generation is *durable*: its prepared :class:`GenerationRequest` is stored as
JSON (``GenerationRequest.to_record()``) and its init images and mask as lossless PNG bytes in
``job_inputs``, so the job can run again after a restart. Other job functions (lab jobs) are
stored without a request and can only be reported. At start-up :meth:`JobStore.recover` marks the
job that was running as failed ("server stopped while this job ran"), fails queued jobs that
cannot run again, and returns the durable queued ones in their order for the queue to re-queue.

The connection is the history's pattern: SQLite WAL, ``synchronous=NORMAL`` (a committed row
survives a killed process) and a busy timeout, so a CLI and a server can share the file.

A job is acknowledged only while the file is healthy (:meth:`JobStore.health`): still at its
path (not deleted with the outputs folder, not replaced by another file) and still an sdstudio
database (SQLite header and our ``application_id``; not overwritten in place). An open SQLite
connection keeps writing into a deleted or overwritten file as if nothing happened, and every job
it "stored" is gone after a restart; :meth:`JobStore.add` refuses instead (HTTP 503 with the reason).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.config import GenerationRequest, HiresSettings

log = logging.getLogger(__name__)

APPLICATION_ID = 0x53445354  # "SDST" at byte 68 of the database header (PRAGMA application_id)
SQLITE_MAGIC = b"SQLite format 3\x00"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

RAN_AT_STOP = "server stopped while this job ran"
NOT_DURABLE = "server stopped before this job ran (only generation jobs are kept across restarts)"
UNREADABLE = "server stopped before this job ran, and its stored request could not be read back"

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,               -- submission order (re-queue order after a restart)
    client TEXT NOT NULL DEFAULT '',
    kind TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,                -- queued | running | done | failed | cancelled
    durable INTEGER NOT NULL DEFAULT 0, -- 1: request_json (+ job_inputs) can run it again
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    error TEXT,
    error_field TEXT,
    error_status INTEGER,
    meta_json TEXT NOT NULL DEFAULT '{}', -- model, warnings, prompt
    request_json TEXT                   -- GenerationRequest.to_record() (NULL when not durable)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, seq);
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id TEXT NOT NULL,
    role TEXT NOT NULL,                 -- init | mask
    idx INTEGER NOT NULL,
    png BLOB NOT NULL,
    PRIMARY KEY (job_id, role, idx)
);
"""


class StoreUnhealthyError(RuntimeError):
    """The job database is not the file this store opened (deleted, replaced or overwritten)."""


@dataclass
class StoredJob:
    """One row of the ``jobs`` table (``request`` is rebuilt only for durable queued jobs)."""

    id: str
    seq: int
    client: str
    kind: str
    state: str
    durable: bool
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    error_field: str | None = None
    error_status: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    request: GenerationRequest | None = None


class JobStore:
    """The ``jobs`` / ``job_inputs`` tables of one SQLite file (thread-safe, one connection)."""

    def __init__(self, db_path: str | os.PathLike, *, keep_finished: int = 2000) -> None:
        self.db_path = Path(db_path)
        self.keep_finished = keep_finished
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        self._app_ids: set[int] = {APPLICATION_ID}
        self._open()

    def _open(self) -> sqlite3.Connection:
        if self._db is None:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.db_path, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.executescript(SCHEMA)
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.commit()
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")  # the header on disk carries it now
            st = self.db_path.stat()
            self._db, self._file_id = conn, (st.st_dev, st.st_ino)
            # a checkpoint another process holds back leaves the old id on disk for a while: accepted
            self._app_ids = {APPLICATION_ID, _app_id(_header(self.db_path))}
        return self._db

    def reopen(self, jobs: Iterable[Any]) -> str | None:
        """After :meth:`health` reported a problem: open the database anew and write back every job
        the queue still knows (queued durable ones with their requests), so none that was
        acknowledged is lost; a file that is not a readable database is moved aside first (with its
        -wal/-shm). Returns where it was moved, or None. Close every other connection first."""
        aside = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db, self._file_id = None, None
            try:
                conn = self._open()
                ok = conn.execute("PRAGMA quick_check").fetchone()[0]
                if ok != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {ok}")
            except sqlite3.DatabaseError as exc:
                if self._db is not None:
                    self._db.close()
                    self._db, self._file_id = None, None
                aside = move_aside(self.db_path)
                log.warning("job database %s unreadable (%s); moved to %s", self.db_path, exc, aside)
                self._open()
            with self._conn:
                for job in jobs:
                    request = job.request if job.state == "queued" and job.durable else None
                    self._write_locked(job, request)
        return aside

    def _write_locked(self, job: Any, request: GenerationRequest | None) -> None:
        """One job's whole row (and inputs), as it is now: the write-back of :meth:`reopen`."""
        request_json, inputs = encode_request(request) if request is not None else (None, [])
        row = (
            job.id, job.seq, job.client, job.kind, job.state, int(request is not None), job.created_at,
            job.started_at, job.finished_at, _text(job.error), job.error_field,
            job.error_status if job.error else None, json.dumps(_plain_meta(job.meta)), request_json,
        )  # fmt: skip
        self._conn.execute(
            "INSERT OR REPLACE INTO jobs (id, seq, client, kind, state, durable, created_at, started_at,"
            " finished_at, error, error_field, error_status, meta_json, request_json)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            row,
        )
        self._conn.execute("DELETE FROM job_inputs WHERE job_id = ?", (job.id,))
        self._conn.executemany(
            "INSERT INTO job_inputs (job_id, role, idx, png) VALUES (?, ?, ?, ?)",
            [(job.id, role, idx, png) for role, idx, png in inputs],
        )

    def health(self) -> str | None:
        """None while the database file is the one this store opened and still an sdstudio
        database; else why not (deleted, replaced, overwritten)."""
        if self._file_id is None:
            return None  # closed: the next use opens the file anew
        try:
            st = self.db_path.stat()
            header = _header(self.db_path)
        except (FileNotFoundError, NotADirectoryError):
            return f"the database {self.db_path} was deleted while the server ran"
        except OSError as exc:
            return f"the database {self.db_path} cannot be read ({exc})"
        if (st.st_dev, st.st_ino) != self._file_id:
            return f"the database {self.db_path} was replaced by another file while the server ran"
        if not header.startswith(SQLITE_MAGIC) or _app_id(header) not in self._app_ids:
            return f"the database {self.db_path} was overwritten while the server ran"
        return None

    @property
    def _conn(self) -> sqlite3.Connection:
        return self._open()  # reopened after close(), as HistoryStore.ensure_open does

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db, self._file_id = None, None

    # -- writing ---------------------------------------------------------------------------
    def add(self, job: Any, request: GenerationRequest | None = None) -> None:
        """Write an accepted job (a queue ``Job``); ``request`` makes it durable (it can run again).

        :class:`StoreUnhealthyError` (before writing) while :meth:`health` reports a problem."""
        problem = self.health()
        if problem:
            raise StoreUnhealthyError(problem)
        request_json, inputs = encode_request(request) if request is not None else (None, [])
        row = (
            job.id, job.seq, job.client, job.kind, job.state, int(request is not None), job.created_at,
            json.dumps(_plain_meta(job.meta)), request_json,
        )  # fmt: skip
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO jobs (id, seq, client, kind, state, durable, created_at, meta_json, request_json)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            self._conn.executemany(
                "INSERT INTO job_inputs (job_id, role, idx, png) VALUES (?, ?, ?, ?)",
                [(job.id, role, idx, png) for role, idx, png in inputs],
            )

    def update(self, job: Any) -> None:
        """Write a job's state, times, error and meta; a final job's stored inputs are dropped."""
        values = (
            job.state, job.started_at, job.finished_at, _text(job.error), job.error_field,
            job.error_status if job.error else None, json.dumps(_plain_meta(job.meta)), job.id,
        )  # fmt: skip
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state = ?, started_at = ?, finished_at = ?, error = ?, error_field = ?,"
                " error_status = ?, meta_json = ? WHERE id = ?",
                values,
            )
            if job.state in ("done", "failed", "cancelled"):
                self._conn.execute("DELETE FROM job_inputs WHERE job_id = ?", (job.id,))

    def recover(self) -> list[StoredJob]:
        """After a restart: fail what cannot run again, return durable queued jobs in order.

        The job that was running is failed with :data:`RAN_AT_STOP` (its finished images are in the
        history already; the rest never came); queued jobs without a stored request fail with
        :data:`NOT_DURABLE`. Old finished rows beyond ``keep_finished`` are forgotten.
        """
        now = time.time()
        with self._lock, self._conn:
            self._conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, error_status = 500, finished_at = ?"
                " WHERE state = 'running'",
                (RAN_AT_STOP, now),
            )
            self._conn.execute(
                "UPDATE jobs SET state = 'failed', error = ?, error_status = 500, finished_at = ?"
                " WHERE state = 'queued' AND durable = 0",
                (NOT_DURABLE, now),
            )
            self._conn.execute(
                "DELETE FROM job_inputs WHERE job_id NOT IN (SELECT id FROM jobs WHERE state = 'queued')"
            )
            self._conn.execute(
                "DELETE FROM jobs WHERE state != 'queued' AND id NOT IN"
                " (SELECT id FROM jobs WHERE state != 'queued' ORDER BY seq DESC LIMIT ?)",
                (self.keep_finished,),
            )
            rows = self._conn.execute("SELECT * FROM jobs WHERE state = 'queued' ORDER BY seq").fetchall()
        out = []
        for row in rows:
            job = self._stored(row)
            try:
                job.request = decode_request(row["request_json"], self._inputs(job.id))
            except (ValueError, TypeError, KeyError, OSError) as exc:
                log.warning("job %s: stored request unreadable (%s); marking it failed", job.id, exc)
                job.state, job.error, job.error_status, job.finished_at = "failed", UNREADABLE, 500, now
                self.update(job)
            out.append(job)
        return out

    # -- reading ---------------------------------------------------------------------------
    def get(self, job_id: str) -> StoredJob | None:
        """The stored row of a job (no request rebuilt), or None."""
        with self._lock:
            row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._stored(row) if row else None

    def max_seq(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs").fetchone()[0])

    def _inputs(self, job_id: str) -> list[tuple[str, int, bytes]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT role, idx, png FROM job_inputs WHERE job_id = ? ORDER BY role, idx", (job_id,)
            ).fetchall()
        return [(r["role"], r["idx"], bytes(r["png"])) for r in rows]

    @staticmethod
    def _stored(row: sqlite3.Row) -> StoredJob:
        return StoredJob(
            id=row["id"], seq=row["seq"], client=row["client"], kind=row["kind"], state=row["state"],
            durable=bool(row["durable"]), created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], error=row["error"], error_field=row["error_field"],
            error_status=row["error_status"], meta=json.loads(row["meta_json"] or "{}"),
        )  # fmt: skip


def move_aside(db_path: Path) -> str:
    """Move a broken database and its -wal/-shm to ``<name>.corrupt-<time>``; returns the new name."""
    aside = db_path.with_name(f"{db_path.name}.corrupt-{int(time.time())}")
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(db_path) + suffix)
        if p.exists():
            p.replace(Path(str(aside) + suffix))
    return str(aside)


def _header(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(100)


def _app_id(header: bytes) -> int:
    return int.from_bytes(header[68:72], "big")


# -- the request as JSON + PNG bytes ---------------------------------------------------------
def encode_request(request: GenerationRequest) -> tuple[str, list[tuple[str, int, bytes]]]:
    """``(to_record() JSON, [(role, index, PNG bytes)])``: PNG keeps every pixel, so a re-run is exact."""
    images = [("init", i, png_bytes(im)) for i, im in enumerate(request.init_images)]
    if request.mask is not None:
        images.append(("mask", 0, png_bytes(request.mask)))
    return json.dumps(request.to_record(), default=str), images


def decode_request(request_json: str, inputs: list[tuple[str, int, bytes]]) -> GenerationRequest:
    """The inverse of :func:`encode_request`."""
    data = json.loads(request_json)
    data.pop("kind", None)  # derived from the inputs
    names = {f.name for f in dataclasses.fields(GenerationRequest)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown request fields {sorted(unknown)}")
    data["styles"] = tuple(data.get("styles") or ())
    if data.get("hires") is not None:
        data["hires"] = HiresSettings(**data["hires"])
    if data.get("outpaint") is not None:
        data["outpaint"] = tuple(data["outpaint"])
    inits = sorted((idx, png) for role, idx, png in inputs if role == "init")
    masks = [png for role, _, png in inputs if role == "mask"]
    data["init_images"] = tuple(open_png(png) for _, png in inits)
    data["mask"] = open_png(masks[0]) if masks else None
    return GenerationRequest(**data)


def png_bytes(image: Any) -> bytes:
    """Lossless PNG of a PIL image (no metadata); PNG bytes are kept as they are."""
    if isinstance(image, bytes) and image.startswith(PNG_SIGNATURE):
        return image
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def compress_inputs(request: GenerationRequest) -> GenerationRequest:
    """The request with its init images and mask as PNG bytes: what a queued job keeps in memory
    (a blank 4096x4096 image is 84 KB, not 48 MB); :func:`expand_inputs` decodes them again."""
    if not request.init_images and request.mask is None:
        return request
    mask = png_bytes(request.mask) if request.mask is not None else None
    return request.replace(init_images=tuple(png_bytes(im) for im in request.init_images), mask=mask)


def expand_inputs(request: GenerationRequest) -> GenerationRequest:
    """The inverse of :func:`compress_inputs` (PIL images are left as they are)."""

    def image(x: Any) -> Any:
        return open_png(x) if isinstance(x, bytes) else x

    if not request.init_images and request.mask is None:
        return request
    mask = image(request.mask) if request.mask is not None else None
    return request.replace(init_images=tuple(image(im) for im in request.init_images), mask=mask)


def open_png(data: bytes) -> Any:
    """A fully loaded PIL image from PNG bytes (same mode and pixels as the saved image)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _text(value: str | None) -> str | None:
    """Text SQLite can store (a lone surrogate from a client becomes U+FFFD instead of failing)."""
    return value.encode("utf-8", "replace").decode("utf-8") if value else value


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able part of a job's meta (model, warnings, prompt)."""
    out = {}
    for key, value in meta.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        out[key] = value
    return out
