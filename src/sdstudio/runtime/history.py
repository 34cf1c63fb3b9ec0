"""The image history: one SQLite database (WAL mode) next to the ``outputs/`` folder.

Every finished image gets a row (job id, request JSON, infotext, seed, model hash, path
relative to the outputs folder, time, size). The gallery lists, filters and pages through the
rows; deleting removes file and row together. :meth:`HistoryStore.reconcile` runs at start-up:
rows whose file is gone are dropped, image files without a row are added back from their
embedded infotext (A1111 ``parameters`` PNG chunk), unreadable files are reported and left
alone, and a corrupt database file is moved aside and rebuilt from the files.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,          -- relative to the outputs folder, '/'-separated
    job_id TEXT,
    kind TEXT,                          -- txt2img | img2img | ...
    created_at REAL NOT NULL,           -- unix time
    day TEXT NOT NULL,                  -- local YYYY-MM-DD (as the output folder)
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    sampler TEXT NOT NULL DEFAULT '',
    model_name TEXT NOT NULL DEFAULT '',
    model_hash TEXT NOT NULL DEFAULT '',
    width INTEGER,
    height INTEGER,
    steps INTEGER,
    cfg_scale REAL,
    file_size INTEGER,
    infotext TEXT NOT NULL DEFAULT '',
    request_json TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS images_created ON images(created_at);
CREATE INDEX IF NOT EXISTS images_model ON images(model_name);
"""

COLUMNS = [
    "path",
    "job_id",
    "kind",
    "created_at",
    "day",
    "prompt",
    "negative_prompt",
    "seed",
    "sampler",
    "model_name",
    "model_hash",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "file_size",
    "infotext",
    "request_json",
]


@dataclass
class ImageRecord:
    """One gallery row; ``path`` is relative to the outputs folder."""

    path: str
    job_id: str | None = None
    kind: str = ""
    created_at: float = field(default_factory=time.time)
    day: str = ""
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    sampler: str = ""
    model_name: str = ""
    model_hash: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    file_size: int | None = None
    infotext: str = ""
    request_json: str = "{}"
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["request"] = json.loads(self.request_json or "{}")
        del d["request_json"]
        return d


@dataclass
class ReconcileReport:
    """What start-up reconciliation changed."""

    removed_rows: list[str] = field(default_factory=list)  # rows whose file was missing
    added_files: list[str] = field(default_factory=list)  # files that had no row
    unreadable: list[str] = field(default_factory=list)  # files PIL could not read (left alone)
    rebuilt_database: str | None = None  # where a corrupt database was moved


class HistoryStore:
    """SQLite-backed gallery index for one outputs folder (thread-safe, one connection)."""

    def __init__(self, db_path: str | os.PathLike, outdir: str | os.PathLike) -> None:
        self.db_path = Path(db_path)
        self.outdir = Path(outdir)
        self._lock = threading.Lock()
        self.rebuilt_from: str | None = None
        self._conn = self._open()

    # -- opening ---------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        """Open (or create) the database; move a corrupt file aside and start a new one."""
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect()
        except sqlite3.OperationalError as exc:  # locked (another server, busy) or unreachable: not
            raise SDStudioError(  # corrupt, and a live database is never moved aside
                f"could not open the history database {self.db_path}: {exc}", field="outdir", status=503
            ) from exc
        except sqlite3.DatabaseError as exc:
            aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{int(time.time())}")
            log.warning("history database %s is unreadable (%s); moved to %s", self.db_path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.db_path) + suffix)
                if p.exists():
                    p.replace(Path(str(aside) + suffix))
            self.rebuilt_from = str(aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, check_same_thread=False, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            conn.executescript(SCHEMA)
            return conn
        except sqlite3.DatabaseError:
            conn.close()
            raise

    def close(self) -> None:
        """Close the connection (SQLite checkpoints the WAL); :meth:`ensure_open` reopens it."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def ensure_open(self) -> None:
        with self._lock:
            if self._conn is None:
                self._conn = self._open()

    # -- writing ---------------------------------------------------------------------------
    def add(self, record: ImageRecord) -> ImageRecord:
        """Insert (or replace, same path) a row; return it with its id."""
        if not record.day:
            record.day = time.strftime("%Y-%m-%d", time.localtime(record.created_at))
        values = [getattr(record, c) for c in COLUMNS]
        sql = f"INSERT OR REPLACE INTO images ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        with self._lock, self._conn:
            record.id = self._conn.execute(sql, values).lastrowid
        return record

    def delete(self, image_id: int) -> ImageRecord | None:
        """Delete the file and its row together; return the deleted record (None if unknown)."""
        with self._lock, self._conn:
            row = self._conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
            if row is None:
                return None
            record = _record(row)
            target = self.resolve(record.path)
            if target is not None and target.is_file():
                target.unlink()
            self._conn.execute("DELETE FROM images WHERE id = ?", (image_id,))
        return record

    # -- reading ---------------------------------------------------------------------------
    def get(self, image_id: int) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return _record(row) if row else None

    def get_by_path(self, rel_path: str) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM images WHERE path = ?", (rel_path,)).fetchone()
        return _record(row) if row else None

    def query(
        self,
        *,
        text: str = "",
        model: str = "",
        sampler: str = "",
        date_from: str = "",
        date_to: str = "",
        job_id: str = "",
        offset: int = 0,
        limit: int = 50,
    ) -> tuple[list[ImageRecord], int]:
        """Rows matching every given filter, newest first, and the total count before paging.

        ``text`` matches prompt or negative prompt (case-insensitive substring); ``model`` matches
        model name or hash; dates are inclusive ``YYYY-MM-DD`` bounds on the local day.
        """
        where, args = [], []
        if text:
            where.append("(prompt LIKE ? ESCAPE '\\' OR negative_prompt LIKE ? ESCAPE '\\')")
            pattern = "%" + _escape_like(text) + "%"
            args += [pattern, pattern]
        if model:
            where.append("(model_name = ? OR model_hash = ?)")
            args += [model, model]
        for column, value, op in (
            ("sampler", sampler, "="),
            ("day", date_from, ">="),
            ("day", date_to, "<="),
        ):
            if value:
                where.append(f"{column} {op} ?")
                args.append(value)
        if job_id:
            where.append("job_id = ?")
            args.append(job_id)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._conn.execute(f"SELECT COUNT(*) FROM images {clause}", args).fetchone()[0]
            rows = self._conn.execute(
                f"SELECT * FROM images {clause} ORDER BY created_at DESC, id DESC LIMIT ? OFFSET ?",
                [*args, int(limit), int(offset)],
            ).fetchall()
        return [_record(r) for r in rows], int(total)

    def facets(self) -> dict[str, list[str]]:
        """Distinct models, samplers and days present, for the gallery's filter menus."""
        out = {}
        with self._lock:
            for key, column in (("models", "model_name"), ("samplers", "sampler"), ("days", "day")):
                rows = self._conn.execute(
                    f"SELECT DISTINCT {column} FROM images WHERE {column} != '' ORDER BY {column}"
                ).fetchall()
                out[key] = [r[0] for r in rows]
        return out

    # -- files -----------------------------------------------------------------------------
    def resolve(self, rel_path: str) -> Path | None:
        """The file for a relative path if it lies inside the outputs folder, else None.

        Refuses absolute paths, ``..`` parts and symlinks that lead outside the folder.
        """
        return safe_join(self.outdir, rel_path)

    def relative(self, path: str | os.PathLike) -> str:
        """Path relative to the outputs folder, '/'-separated."""
        return Path(os.path.relpath(Path(path).resolve(), self.outdir.resolve())).as_posix()

    def reconcile(self) -> ReconcileReport:
        """Drop rows without files, add files without rows; never raises for bad files."""
        report = ReconcileReport(rebuilt_database=self.rebuilt_from)
        with self._lock:
            rows = self._conn.execute("SELECT id, path FROM images").fetchall()
        known = set()
        for row in rows:
            target = self.resolve(row["path"])
            if target is None or not target.is_file():
                with self._lock, self._conn:
                    self._conn.execute("DELETE FROM images WHERE id = ?", (row["id"],))
                report.removed_rows.append(row["path"])
            else:
                known.add(row["path"])
        for path in _image_files(self.outdir):
            rel = self.relative(path)
            if rel in known:
                continue
            record = record_from_file(path, rel)
            if record is None:
                report.unreadable.append(rel)
                continue
            self.add(record)
            report.added_files.append(rel)
        if report.removed_rows or report.added_files or report.unreadable:
            log.warning(
                "history reconcile: %d rows without files removed, %d files added, %d unreadable",
                len(report.removed_rows),
                len(report.added_files),
                len(report.unreadable),
            )
        return report


def safe_join(root: Path, rel_path: str) -> Path | None:
    """``root / rel_path`` resolved, or None if it is absolute, has ``..`` or escapes ``root``."""
    if not rel_path or "\x00" in rel_path or "\\" in rel_path:
        return None
    parts = Path(rel_path).parts
    if Path(rel_path).is_absolute() or any(p in ("..", "") for p in parts) or rel_path.startswith("/"):
        return None
    root_resolved = root.resolve()
    target = (root_resolved / rel_path).resolve()
    if target != root_resolved and root_resolved not in target.parents:
        return None
    return target


def _image_files(outdir: Path):
    """Image files under ``outdir`` (no symlinks followed, hidden and temp files skipped)."""
    if not outdir.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(outdir, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES) or p.is_symlink():
                continue
            yield p


def read_image_text(image: Any) -> tuple[str, dict[str, Any]]:
    """The A1111 ``parameters`` infotext of an open PIL image and its other text items.

    PNG: the ``parameters`` tEXt/iTXt chunk; JPEG/WebP: EXIF UserComment (0x9286), as A1111's
    ``read_info_from_image`` does.
    """
    items = {k: v for k, v in (image.info or {}).items() if isinstance(k, str) and isinstance(v, str)}
    text = items.pop("parameters", "")
    if not text:
        text = _exif_user_comment(image)
    return text, items


def _exif_user_comment(image: Any) -> str:
    try:
        exif = image.getexif()
        raw = exif.get(0x9286) or exif.get_ifd(0x8769).get(0x9286)  # top level or the Exif IFD
    except Exception:  # noqa: BLE001 - unreadable EXIF means no infotext
        return ""
    if not raw:
        return ""
    if isinstance(raw, str):
        return raw
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\x00":
        for enc in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(enc)
                if text.isprintable() or "\n" in text:
                    return text
            except UnicodeDecodeError:
                continue
    return body.decode("utf-8", errors="replace").strip("\x00")


def record_from_file(path: Path, rel: str) -> ImageRecord | None:
    """Build a row from an image file's embedded infotext; None when PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            width, height = im.size
            text, _ = read_image_text(im)
    except Exception:  # noqa: BLE001 - any decoder failure means "unreadable file", reported by reconcile
        return None
    params = _parse(text)
    stat = path.stat()
    kind = rel.split("/", 1)[0].removesuffix("-images") if "/" in rel else ""
    return ImageRecord(
        path=rel,
        kind=kind,
        created_at=stat.st_mtime,
        prompt=str(params.get("Prompt", "")),
        negative_prompt=str(params.get("Negative prompt", "")),
        seed=_int_or_none(params.get("Seed")),
        sampler=str(params.get("Sampler", "")),
        model_name=str(params.get("Model", "")),
        model_hash=str(params.get("Model hash", "")),
        width=width,
        height=height,
        steps=_int_or_none(params.get("Steps")),
        cfg_scale=_float_or_none(params.get("CFG scale")),
        file_size=stat.st_size,
        infotext=text,
    )


def _parse(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        from sdstudio.infotext import parse_infotext

        return parse_infotext(text)
    except Exception:  # noqa: BLE001 - a malformed infotext still yields prompt and simple pairs
        return _parse_minimal(text)


def _parse_minimal(text: str) -> dict[str, Any]:
    """Fallback reader: prompt, negative prompt and simple ``key: value`` pairs of the last line."""
    lines = text.strip().split("\n")
    params_line = lines.pop() if len(lines) > 1 and ": " in lines[-1] else ""
    out: dict[str, Any] = {}
    neg = [i for i, line in enumerate(lines) if line.startswith("Negative prompt: ")]
    if neg:
        out["Negative prompt"] = "\n".join(lines[neg[0] :])[len("Negative prompt: ") :]
        lines = lines[: neg[0]]
    out["Prompt"] = "\n".join(lines)
    for pair in params_line.split(", "):
        if ": " in pair:
            k, v = pair.split(": ", 1)
            out[k.strip()] = v.strip()
    return out


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _record(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118 - sqlite3.Row iterates values
