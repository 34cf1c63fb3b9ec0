"""The model manager: what is in the models folder, and which one model is loaded.

The folder follows A1111's layout so a user can point sdstudio at an existing A1111 install:
``Stable-diffusion/`` (checkpoints), ``Lora/``, ``VAE/``, ``embeddings/``, and the upscaler folders
of A1111 and ComfyUI (``ESRGAN/``, ``upscale_models/``, ...: :mod:`sdstudio.upscale.files`). Checkpoints are
named as A1111 names them (``title`` = relative file name plus ``[short hash]`` once known,
``model_name`` = relative name without extension); the relative name with its extension is the
unique key, so ``x.ckpt`` and ``x.safetensors`` are two models. Models built in memory (tests)
are registered by name; the embedded default model is always listed and is the default unless
``--model`` (or an in-memory model) is given. Only the queue's worker calls :meth:`acquire`, so
loading and switching happen between jobs, never during one.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.families import family_of

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")
VAE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".sft")
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
SUBFOLDERS = {"checkpoints": "Stable-diffusion", "lora": "Lora", "vae": "VAE", "embeddings": "embeddings"}


@dataclass
class ModelEntry:
    """One selectable checkpoint (a file under Stable-diffusion/, or a model held in memory)."""

    model_name: str  # relative path without extension, '/'-separated (A1111 model_name)
    filename: str  # absolute path ('' for in-memory models)
    sha256: str | None = None
    in_memory: Any = None  # a StableDiffusionModel registered directly
    embedded: bool = False  # the default model shipped inside the package (loaded with loader(None))
    short_hash: str | None = None  # the loader's model hash when no file SHA-256 is known (folders)

    @property
    def hash(self) -> str | None:
        """A1111 short hash: the first 10 hex digits of the file's SHA-256."""
        return self.sha256[:10] if self.sha256 else self.short_hash

    @property
    def title(self) -> str:
        """A1111 title: ``name.safetensors [hash]`` (file name only when the hash is unknown)."""
        base = self.relname
        return f"{base} [{self.hash}]" if self.hash else base

    @property
    def relname(self) -> str:
        if not self.filename or self.embedded:
            return self.model_name
        return self.model_name + Path(self.filename).suffix

    @property
    def key(self) -> str:
        """Unique id among the entries: the relative file name with its extension (A1111 title
        without the hash), so ``x.ckpt`` and ``x.safetensors`` stay two models; in-memory name otherwise."""
        return self.relname

    def exact_names(self) -> set[str]:
        """Names that pick this entry and no other: title, relative name, absolute path, hashes."""
        names = {self.title, self.relname}
        if self.filename:
            names.add(self.filename)
        if self.sha256:
            names |= {self.hash, self.sha256}
        elif self.short_hash:
            names.add(self.short_hash)
        return names

    def loose_names(self) -> set[str]:
        """Names that pick this entry only when no other entry shares them (A1111 ``model_name``)."""
        return {self.model_name, Path(self.relname).name}

    def matches(self, name: str) -> bool:
        """True when ``name`` is this entry's title, file name, model name, or short/full hash."""
        name = name.strip()
        return name in self.exact_names() | self.loose_names()


@dataclass
class AuxFile:
    """A LoRA, VAE or embedding file found in the models folder."""

    name: str
    path: str


class ModelManager:
    """Scans the models folder, resolves names, and loads one model at a time.

    ``loader(path_or_None, device=..., precision=...)`` defaults to
    :func:`sdstudio.models.loader.load_model` (``None`` = the embedded default model).
    """

    def __init__(
        self,
        models_dir: str | os.PathLike | None = None,
        *,
        default_model: str | None = None,
        device: str = "cpu",
        precision: str = "auto",
        backend: str | None = None,
        tiny_vae: str | os.PathLike | None = None,
        loader: Callable[..., Any] | None = None,
        models: dict[str, Any] | None = None,
    ) -> None:
        self.models_dir = Path(models_dir) if models_dir else None
        self.default_model = default_model
        self.device = device
        self.precision = precision
        self.backend = backend
        self.tiny_vae = str(tiny_vae) if tiny_vae else None  # for models without a taesd/ of their own
        self._loader = loader
        self._lock = threading.RLock()
        self._memory: dict[str, Any] = dict(models or {})
        self._entries: list[ModelEntry] = []
        self._hash_cache: dict[tuple[str, int, float], str] = {}
        self.selected: str | None = None  # name chosen via options / API; loaded before the next job
        self.loaded_name: str | None = None
        self.loaded: Any = None
        self.last_error: str | None = None
        self._upscaler: tuple[tuple[str, int, float], Any] | None = None  # (file key, LoadedUpscaler)
        from sdstudio.networks import NetworkLibrary

        self.networks = NetworkLibrary.from_models_dir(self.models_dir)  # LoRA/embeddings/VAE/hypernetworks
        self.refresh()

    # -- listing ---------------------------------------------------------------------------
    def refresh(self) -> list[ModelEntry]:
        """Rescan the checkpoints folder (A1111 refresh-checkpoints) and return all entries."""
        entries = [ModelEntry(model_name=name, filename="", in_memory=m) for name, m in self._memory.items()]
        if self.default_model:
            entries.append(self._file_entry(Path(self.default_model), Path(self.default_model).parent))
        folder = self.folder("checkpoints")
        for path in _model_paths(folder):
            if not any(e.filename == str(path.resolve()) for e in entries):
                entries.append(self._file_entry(path, folder))
        entries += self._embedded_entries()
        with self._lock:
            self._entries = entries
        return entries

    def _embedded_entries(self) -> list[ModelEntry]:
        """The shipped default model as a selectable entry: always listed, whatever the folder holds."""
        folder = _embedded_folder()
        if folder is None:
            return []
        old = next((e for e in self._entries if e.embedded), None)
        return [
            ModelEntry(
                model_name=folder.name, filename=str(folder), embedded=True, short_hash=old and old.short_hash
            )
        ]

    def native_size(self, entry: ModelEntry | None) -> int | None:
        """Pixel size the model was trained at (UNet sample_size x VAE factor), when known without loading.

        Known for in-memory and loaded models, diffusers folders and safetensors files (configs and
        header only: ``families.base.native_size``); None for pickles not loaded yet.
        """
        model = entry.in_memory if entry is not None and entry.in_memory is not None else None
        if model is None and self.loaded is not None and entry is not None and self.loaded_name == entry.key:
            model = self.loaded
        if model is not None:
            return model.native_size
        if entry is not None and entry.filename:
            return _file_native_size(Path(entry.filename))
        return None

    def defaults(self, entry: ModelEntry | None) -> Any:
        """:class:`ModelDefaults` of an entry without loading it: native size (folders, in-memory and
        loaded models; single files from the architecture in their header) and declared defaults."""
        from sdstudio.models.sdmodel import ModelDefaults

        if entry is None:
            entry = next((e for e in self.entries() if e.embedded), None)
        if entry is None:
            return ModelDefaults()
        if entry.in_memory is not None:
            return entry.in_memory.defaults
        if self.loaded is not None and self.loaded_name == entry.key:
            return self.loaded.defaults
        info = _file_info(Path(entry.filename)) if entry.filename else None
        folder = entry.filename if entry.filename and Path(entry.filename).is_dir() else None
        family = family_of(info.model_arch).defaults if info is not None else None
        return ModelDefaults.read(folder, info.native_size if info is not None else None, family)

    def entries(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._entries)

    def folder(self, kind: str) -> Path | None:
        """``models_dir/<A1111 subfolder>`` for kind checkpoints|lora|vae|embeddings."""
        return self.models_dir / SUBFOLDERS[kind] if self.models_dir else None

    def aux_files(self, kind: str) -> list[AuxFile]:
        """LoRA, VAE or embedding files (kind lora|vae|embeddings) with A1111-style names."""
        suffixes = {"lora": LORA_SUFFIXES, "vae": VAE_SUFFIXES, "embeddings": EMBEDDING_SUFFIXES}[kind]
        folder = self.folder(kind)
        out = []
        for path in _files(folder, suffixes):
            rel = path.relative_to(folder).as_posix()
            name = rel if kind == "vae" else rel.rsplit(".", 1)[0]
            out.append(AuxFile(name=name, path=str(path.resolve())))
        return out

    def upscalers(self) -> list[Any]:
        """Model upscaler files (:class:`sdstudio.upscale.UpscalerFile`) in the folders A1111 and
        ComfyUI use: ``ESRGAN``, ``RealESRGAN``, ``SwinIR``, ``DAT``, ``HAT``, ``upscale_models``."""
        from sdstudio.upscale.files import find_upscalers

        return find_upscalers(self.models_dir)

    def load_upscaler(self, path: str | os.PathLike) -> Any:
        """The upscaler in ``path``, loaded with spandrel (:func:`sdstudio.upscale.load_upscaler`); the
        last one loaded is kept until another file (or a changed one) is asked for."""
        from sdstudio.upscale.load import load_upscaler

        p = Path(path)
        stat = p.stat()
        key = (str(p.resolve()), stat.st_size, stat.st_mtime)
        with self._lock:
            if self._upscaler is None or self._upscaler[0] != key:
                self._upscaler = None  # free the previous one before loading the next
                self._upscaler = (key, load_upscaler(p, device=self.device))
            return self._upscaler[1]

    def register(self, name: str, model: Any) -> None:
        """Make an already-built model selectable under ``name``."""
        with self._lock:
            self._memory[name] = model
        self.refresh()

    def find(self, name: str) -> ModelEntry:
        """The entry a client's name refers to: exact title, relative file name, path or hash first;
        the bare model name (no extension) only when one entry has it. Ambiguous names -> 422."""
        name = name.strip()
        entries = self.entries()
        hits = [e for e in entries if name in e.exact_names()]
        if not hits:
            hits = [e for e in entries if name in e.loose_names()]
        if not hits and " [" in name:
            # A1111 clients may send "name [oldhash]" where the hash differs: match on the name part.
            base = name.split(" [", 1)[0].strip()
            hits = [e for e in entries if base and base in e.exact_names()]
        shas = {e.sha256 for e in hits}
        if len({e.key for e in hits}) > 1 and (len(shas) != 1 or None in shas):  # same bytes: either
            titles = ", ".join(e.title for e in hits)
            raise SDStudioError(
                f"model name {name!r} is ambiguous: {titles}; use the title with its extension or the hash",
                field="sd_model_checkpoint",
            )
        if hits:
            return hits[0]
        known = ", ".join(e.title for e in entries) or "none"
        raise SDStudioError(f"model {name!r} not found; available: {known}", field="sd_model_checkpoint")

    def select(self, name: str) -> ModelEntry:
        """Choose the model for the next jobs (loaded by the worker before it runs one)."""
        entry = self.find(name)
        with self._lock:
            self.selected = entry.key
        return entry

    def current_entry(self) -> ModelEntry | None:
        """The entry that the next job without an explicit model will use.

        The selected or loaded model; else the default: ``--model``, else a model registered in
        memory, else the embedded one. A file found in the folder is never picked on its own.
        """
        name = self.selected or self.loaded_name
        if name:
            try:
                return self.find(name)
            except SDStudioError:
                return None
        return self.default_entry()

    def default_entry(self) -> ModelEntry | None:
        """``--model`` if given, else the first in-memory model, else the embedded default model."""
        entries = self.entries()
        if self.default_model:
            wanted = str(Path(self.default_model).resolve())
            for entry in entries:
                if entry.filename == wanted:
                    return entry
        for pick in (lambda e: e.in_memory is not None, lambda e: e.embedded):
            for entry in entries:
                if pick(entry):
                    return entry
        return None

    def loaded_title(self) -> str:
        """The loaded model's title as the model list shows it (``name [hash]``), '' when none."""
        name = self.loaded_name
        entry = next((e for e in self.entries() if e.key == name), None)
        return entry.title if entry is not None else (name or "")

    # -- loading (worker thread only) ------------------------------------------------------
    def acquire(self, name: str | None = None, on_phase: Callable[[str], None] | None = None) -> Any:
        """The loaded model for ``name`` (or the current one), loading/switching if needed; ``on_phase``
        hears "Loading <title>…" before a load (the job's progress shows it).

        A job's own model (A1111 ``override_settings``) does not become the model of later jobs: when
        nothing was selected, the model current before it is pinned as the selection (A1111 restores
        it afterwards; ``override_settings_restore_afterwards: false`` selects the job's model instead,
        ``api.routes_a1111``).
        """
        if name and self.selected is None:
            before = self.current_entry()
            with self._lock:
                if self.selected is None and before is not None:
                    self.selected = before.key
        entry = self.find(name) if name else self.current_entry()
        key = entry.key if entry else "<default>"
        with self._lock:
            if self.loaded is not None and self.loaded_name == key:
                return self.loaded
            previous = self.loaded_name
            self._unload_locked()
            if on_phase is not None:  # the job shows it: a first use may also convert it once (minutes)
                on_phase(f"Loading {entry.title if entry else 'the default model'}…")
            try:
                model = self._load(entry)
            except SDStudioError as exc:
                self._load_failed(key, previous, str(exc))
                raise
            except Exception as exc:
                self._load_failed(key, previous, f"could not load model {key!r}: {type(exc).__name__}: {exc}")
                raise SDStudioError(self.last_error, field="sd_model_checkpoint", status=503) from exc
            self.loaded, self.loaded_name, self.last_error = model, key, None
            return model

    def _load_failed(self, key: str, previous: str | None, message: str) -> None:
        """A model that failed to load never stays selected: fall back to the one loaded before
        (or the default), so the next job does not fail on the same broken file."""
        self.last_error = message
        if self.selected == key:
            self.selected = previous if previous != key else None

    def _load(self, entry: ModelEntry | None) -> Any:
        if entry is not None and entry.in_memory is not None:
            return entry.in_memory
        loader = self._loader or _default_loader
        path = entry.filename if entry is not None and not entry.embedded else None
        extra = (
            {"backend": self.backend} if self.backend is not None else {}
        )  # custom loaders need not know it
        if self.tiny_vae is not None:
            extra["default_tiny_vae_path"] = self.tiny_vae
        model = loader(path, device=self.device, precision=self.precision, **extra)
        if entry is not None and (entry.embedded or Path(entry.filename).is_dir()):
            entry.short_hash = model.model_hash or None
        elif entry is not None and entry.filename:
            entry.sha256 = entry.sha256 or self.sha256(Path(entry.filename))
            if not model.model_hash:
                model.model_hash = entry.hash
        return model

    def apply_vae(self, model: Any, choice: str | None) -> None:
        """Switch ``model``'s VAE to the A1111 ``sd_vae`` choice (Automatic, None, a VAE name or path);
        the checkpoint is not reloaded (worker thread, between jobs)."""
        from sdstudio.networks.vae import resolve_vae, use_vae

        use_vae(model, resolve_vae(choice, model.path or None, self.networks))

    def unload(self) -> None:
        """Drop the loaded model (A1111 ``/sdapi/v1/unload-checkpoint``): its memory goes once a job
        still running with it ends, and the next job reads it from its file again."""
        with self._lock:
            self._unload_locked()

    def _unload_locked(self) -> None:
        self.loaded, self.loaded_name = None, None
        gc.collect()

    def sha256(self, path: Path) -> str:
        """SHA-256 of a file from the one hash cache (``checkpoints.hashing``, ``hashes.json``: the loader
        fills it when it loads the file, so a first load reads a multi-GB file once), kept in memory too."""
        from sdstudio.checkpoints.hashing import default_cache_dir, sha256_cached

        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime)
        if key not in self._hash_cache:
            self._hash_cache[key] = sha256_cached(path, default_cache_dir() / "hashes.json")
        return self._hash_cache[key]

    def _file_entry(self, path: Path, folder: Path) -> ModelEntry:
        try:
            rel = path.resolve().relative_to(folder.resolve()).as_posix()
        except ValueError:
            rel = path.name
        st = path.stat() if path.exists() else None
        cached = self._hash_cache.get((str(path.resolve()), st.st_size, st.st_mtime)) if st else None
        name = rel if path.is_dir() else rel.rsplit(".", 1)[0]  # a folder's name keeps its dots
        return ModelEntry(model_name=name, filename=str(path.resolve()), sha256=cached)


def _default_loader(path: str | None, *, device: str, precision: str, backend: str | None = None,
                    default_tiny_vae_path: str | None = None) -> Any:  # fmt: skip
    from sdstudio.models.loader import load_model

    return load_model(path, device=device, precision=precision, backend=backend,
                      default_tiny_vae_path=default_tiny_vae_path)  # fmt: skip


def _embedded_folder() -> Path | None:
    from sdstudio.models.loader import default_model_path

    try:
        return default_model_path()
    except SDStudioError:  # a build without the embedded model
        return None


def _file_info(path: Path) -> Any:
    """What a model folder or safetensors file is, from its configs and header (``ModelInfo``); None
    for pickles (read whole: not for a listing) and for what no family reads."""
    if not (path.is_dir() or path.suffix.lower() == ".safetensors"):
        return None
    from sdstudio.models.loader import inspect_model

    try:
        return inspect_model(path)
    except (SDStudioError, KeyError, OSError, ValueError, TypeError):
        return None


def _file_native_size(path: Path) -> int | None:
    info = _file_info(path)
    return info.native_size if info is not None else None


def _model_paths(folder: Path | None) -> list[Path]:
    """Checkpoint files and diffusers model folders (``model_index.json``) under ``folder``; the files
    inside a model folder are its components, not models of their own."""
    if folder is None or not folder.is_dir():
        return []
    roots = sorted(p.parent for p in folder.rglob("model_index.json"))
    files = [
        p
        for p in _files(folder, CHECKPOINT_SUFFIXES)
        if not any(r == p.parent or r in p.parents for r in roots)
    ]
    return sorted(files + roots)


def _files(folder: Path | None, suffixes: tuple[str, ...]) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
