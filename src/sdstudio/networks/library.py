"""The extra-network library: LoRA, embedding, VAE and hypernetwork files of an A1111 models folder.

``NetworkLibrary`` finds files by the names prompts use, reads them (cached by path, size and
mtime, so switching LoRA sets between jobs reads nothing twice and never reloads the checkpoint),
and computes the hashes A1111 writes into the infotext: LoRA ``sha256`` of the safetensors tensor
data after the header (kohya/"addnet" hash, A1111 ``hashes.addnet_hash_safetensors``) or of the
whole file for pickles, first 12 hex digits; embeddings ``sha256(file)[:12]``; VAE ``sha256[:10]``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")
HYPERNETWORK_SUFFIXES = (".pt",)
SUBFOLDERS = {"lora": "Lora", "embeddings": "embeddings", "vae": "VAE", "hypernetworks": "hypernetworks"}
CACHE_SIZE = 16  # LoRA / embedding files kept in memory
FAILED_CACHE_SIZE = 1024  # unreadable files remembered (each logged once)
MAX_METADATA_HEADER = 8 * 1024 * 1024  # LoRA listing: kohya metadata (tag frequencies included) is < 1 MB
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NetworkFile:
    """A file of one network kind: A1111 name (relative path without extension) and absolute path."""

    name: str
    path: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def alias(self) -> str:
        """A1111 alias: kohya's ``ss_output_name`` metadata, else the name."""
        return self.metadata.get("ss_output_name") or self.name


class NetworkLibrary:
    """Folders of LoRAs, embeddings, VAEs and hypernetworks (any may be None)."""

    def __init__(
        self,
        *,
        lora_dir: str | Path | None = None,
        embeddings_dir: str | Path | None = None,
        vae_dir: str | Path | None = None,
        hypernetwork_dir: str | Path | None = None,
    ) -> None:
        self.dirs = {
            "lora": _path(lora_dir),
            "embeddings": _path(embeddings_dir),
            "vae": _path(vae_dir),
            "hypernetworks": _path(hypernetwork_dir),
        }
        self._lock = threading.RLock()
        self._files: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
        self._failed: dict[tuple[str, int, int], SDStudioError] = {}  # unreadable files, by file state
        self._hashes: dict[tuple[str, int, int, str], Any] = {}  # hashes and LoRA metadata by file state

    @classmethod
    def from_models_dir(cls, models_dir: str | Path | None, **overrides: Any) -> NetworkLibrary:
        """The A1111 layout under ``models_dir``: ``Lora/``, ``embeddings/``, ``VAE/``, ``hypernetworks/``;
        keyword overrides (``lora_dir=...``) replace single folders."""
        base = Path(models_dir) if models_dir else None
        dirs = {
            f"{'hypernetwork' if kind == 'hypernetworks' else kind}_dir": (base / sub if base else None)
            for kind, sub in SUBFOLDERS.items()
        }
        dirs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**dirs)

    # -- listing ---------------------------------------------------------------------------
    def files(self, kind: str) -> list[NetworkFile]:
        """Files of ``kind`` (lora | embeddings | vae | hypernetworks), sorted; names '/'-separated."""
        suffixes = {
            "lora": LORA_SUFFIXES,
            "embeddings": EMBEDDING_SUFFIXES,
            "vae": VAE_SUFFIXES,
            "hypernetworks": HYPERNETWORK_SUFFIXES,
        }[kind]
        folder = self.dirs[kind]
        if folder is None or not folder.is_dir():
            return []
        out = []
        for p in sorted(folder.rglob("*")):
            if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."):
                rel = p.relative_to(folder).as_posix()
                name = rel if kind == "vae" else rel.rsplit(".", 1)[0]
                meta = self._metadata(p) if kind == "lora" else {}
                out.append(NetworkFile(name, str(p.resolve()), meta))
        return out

    def _metadata(self, path: Path) -> dict[str, str]:
        """A LoRA's safetensors metadata, cached while the file's size and mtime stay the same."""
        key = (*_stat_key(str(path)), "metadata")
        with self._lock:
            if key not in self._hashes:
                self._hashes[key] = safetensors_metadata(path)
            return self._hashes[key]

    def find(self, kind: str, name: str) -> NetworkFile:
        """The file a prompt or option names: relative name, file stem, or (LoRA) alias."""
        files = self.files(kind)
        for attr in ("name", "stem", "alias"):
            for f in files:
                if (Path(f.name).name if attr == "stem" else getattr(f, attr)) == name:
                    return f
        folder = self.dirs[kind]
        where = str(folder) if folder is not None else f"no {SUBFOLDERS[kind]} folder configured"
        known = ", ".join(f.name for f in files[:20]) or "none"
        raise SDStudioError(f"{kind} {name!r} not found in {where}; available: {known}", field="prompt")

    # -- reading (cached) ------------------------------------------------------------------
    def cached(self, path: str, reader) -> Any:
        """``reader(Path)`` of a file, cached while its size and mtime stay the same.

        A file the reader refuses (SDStudioError) is logged once as a warning and its error kept
        for the same file state: later calls raise it again without reading the file."""
        key = _stat_key(path)
        with self._lock:
            if key in self._files:
                self._files.move_to_end(key)
                return self._files[key]
            if key in self._failed:
                raise self._failed[key]
        try:
            value = reader(Path(path))
        except SDStudioError as exc:
            with self._lock:
                if key not in self._failed:
                    log.warning("skipping %s: %s", path, exc)
                self._failed[key] = exc
                while len(self._failed) > FAILED_CACHE_SIZE:
                    self._failed.pop(next(iter(self._failed)))
            raise
        with self._lock:
            self._files[key] = value
            while len(self._files) > CACHE_SIZE:
                self._files.popitem(last=False)
        return value

    def lora_hash(self, path: str) -> str:
        """A1111 LoRA short hash (12 hex digits; safetensors: tensor data only, as kohya/addnet)."""
        return self._hash(path, "addnet" if path.lower().endswith(".safetensors") else "file")[:12]

    def file_hash(self, path: str, digits: int) -> str:
        return self._hash(path, "file")[:digits]

    def _hash(self, path: str, how: str) -> str:
        key = (*_stat_key(path), how)
        with self._lock:
            if key not in self._hashes:
                self._hashes[key] = _sha256(Path(path), _data_offset(Path(path)) if how == "addnet" else 0)
            return self._hashes[key]


def _path(p: str | Path | None) -> Path | None:
    return Path(p).expanduser() if p else None


def _stat_key(path: str) -> tuple[str, int, int]:
    st = Path(path).stat()
    return (str(path), st.st_size, st.st_mtime_ns)


def _sha256(path: Path, offset: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _data_offset(path: Path) -> int:
    """Byte offset of a safetensors file's tensor data (8-byte header length + header)."""
    with open(path, "rb") as f:
        head = f.read(8)
    return 8 + struct.unpack("<Q", head)[0] if len(head) == 8 else 0


def safetensors_metadata(path: str | Path, max_header: int = MAX_METADATA_HEADER) -> dict[str, str]:
    """The ``__metadata__`` of a .safetensors file (header only; {} for others, unreadable files and
    headers over ``max_header`` bytes: parsing a 40 MB header holds the interpreter for half a second)."""
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        return {}
    try:
        with open(p, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            if n > min(max_header, p.stat().st_size):
                return {}
            meta = json.loads(f.read(n)).get("__metadata__", {})
    except (OSError, ValueError, struct.error, AttributeError):
        return {}
    return {str(k): str(v) for k, v in meta.items()} if isinstance(meta, dict) else {}
