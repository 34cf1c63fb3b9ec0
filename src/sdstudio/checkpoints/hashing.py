"""A1111 model hashes: ``sha256(file)[:10]`` ("Model hash" in the infotext), cached per file.

The cache is a small JSON file keyed by absolute path and validated by size and mtime (A1111's
``cache.json`` "hashes" section does the same). Its location is passed in explicitly; the default is
``$SDSTUDIO_CACHE_DIR/hashes.json`` or ``~/.cache/sdstudio/hashes.json``. Writes are atomic
(temp file + rename), and an unreadable cache is treated as empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

CACHE_VERSION = 1
SHORT_HASH_LEN = 10


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Return the cache folder: ``SDSTUDIO_CACHE_DIR`` if set, else ``~/.cache/sdstudio``."""
    env = os.environ if environ is None else environ
    custom = env.get("SDSTUDIO_CACHE_DIR")
    return Path(custom).expanduser() if custom else Path.home() / ".cache" / "sdstudio"


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _load_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"version": CACHE_VERSION, "files": {}}
    if (
        not isinstance(data, dict)
        or data.get("version") != CACHE_VERSION
        or not isinstance(data.get("files"), dict)
    ):
        return {"version": CACHE_VERSION, "files": {}}
    return data


def write_json_atomically(cache_file: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``cache_file`` through a temporary file and a rename (never half-written)."""
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{cache_file.stem}-", suffix=".json", dir=cache_file.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, cache_file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_cached(path: str | Path, cache_file: str | Path | None) -> str:
    """Return the full SHA-256 of ``path``, from ``cache_file`` when size and mtime still match.

    ``cache_file=None`` disables caching.
    """
    p = Path(path).resolve()
    st = p.stat()
    key = str(p)
    if cache_file is None:
        return file_sha256(p)
    cache_path = Path(cache_file)
    data = _load_cache(cache_path)
    entry = data["files"].get(key)
    if (
        isinstance(entry, dict)
        and entry.get("size") == st.st_size
        and entry.get("mtime_ns") == st.st_mtime_ns
    ):
        return str(entry["sha256"])
    digest = file_sha256(p)
    data["files"][key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        write_json_atomically(cache_path, data)
    except OSError:
        pass  # a read-only cache location must not stop loading a model
    return digest


def model_hash(path: str | Path, cache_file: str | Path | None = None) -> str:
    """Return the A1111 "Model hash" of a file: the first 10 hex digits of its SHA-256."""
    return sha256_cached(path, cache_file)[:SHORT_HASH_LEN]


def diffusers_weights_file(folder: str | Path, subfolder: str = "unet") -> Path | None:
    """Return the weights file of one component of a diffusers folder (safetensors preferred), or None."""
    base = Path(folder) / subfolder
    for name in ("diffusion_pytorch_model.safetensors", "model.safetensors", "diffusion_pytorch_model.bin"):
        if (base / name).is_file():
            return base / name
    return None
