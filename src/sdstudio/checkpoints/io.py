"""Safe reading and writing of model state dicts: safetensors, or weights-only pickles.

Pickled checkpoints (.ckpt/.pt/.pth/.bin) are read only with ``torch.load(weights_only=True)``; a
pickle that needs to run code (any callable other than torch's tensor rebuilders) is refused. No
code from a model file ever runs (shared/REFERENCE.md §7).
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sdstudio.errors import SDStudioError

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
METADATA_KEY = "sdstudio_metadata"  # top-level dict of str -> str in pickled checkpoints we read


@dataclass
class Checkpoint:
    """A state dict read from one file, with its string metadata and (pickles only) ``global_step``."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    global_step: int | None = None
    path: Path | None = None


def check_model_path(path: str | Path) -> Path:
    """Return ``path`` as a Path if it is a readable model file or diffusers folder, else raise SDStudioError."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SDStudioError(f"model not found: {p}", field="model")
    if p.is_dir():
        if not (p / "model_index.json").is_file():
            raise SDStudioError(
                f"{p} is a folder without model_index.json; a diffusers model folder needs one "
                "(or pass a single .safetensors/.ckpt file)",
                field="model",
            )
        return p
    suffix = p.suffix.lower()
    if suffix not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
        allowed = ", ".join(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES)
        raise SDStudioError(
            f"unsupported model file type {suffix or '(no extension)'!r} for {p}; expected {allowed} or a diffusers folder",
            field="model",
        )
    if p.stat().st_size == 0:
        raise SDStudioError(f"model file {p} is empty (0 bytes)", field="model")
    return p


def read_checkpoint(
    path: str | Path, dtype: torch.dtype | None = None, skip: tuple[str, ...] = ()
) -> Checkpoint:
    """Read a single-file checkpoint into CPU tensors; unwrap ``state_dict`` nesting (A1111/LDM .ckpt).

    ``dtype`` converts floating tensors as they are read (safetensors: one tensor at a time), so a
    fp16 file loaded for bf16 never holds a second full copy in the file's dtype. Safetensors keys
    starting with one of ``skip`` are not read: they come as ``meta`` tensors of their shape (and
    ``dtype``); pickles are read whole.
    """
    p = check_model_path(path)
    if p.is_dir():
        raise SDStudioError(f"{p} is a diffusers folder, not a single-file checkpoint", field="model")
    if p.suffix.lower() in SAFETENSORS_SUFFIXES:
        state_dict, metadata = _read_safetensors(p, dtype, skip)
        return Checkpoint(state_dict, metadata, None, p)
    checkpoint = _read_pickle(p)
    if dtype is not None:
        sd = checkpoint.state_dict
        for key in list(sd):
            sd[key] = _cast(sd.pop(key), dtype)
    return checkpoint


def _cast(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return t.to(dtype) if dtype is not None and t.is_floating_point() else t


def _read_safetensors(
    p: Path, dtype: torch.dtype | None = None, skip: tuple[str, ...] = ()
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:  # validates header and offsets
            metadata = dict(f.metadata() or {})
            if dtype is not None or skip:
                keys = list(f.keys())
            else:
                state_dict = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
        if dtype is not None or skip:
            state_dict = _stream_safetensors(p, keys, dtype, skip)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # any failure (even a Rust panic) means a broken file
        raise SDStudioError(
            f"{p} is not a valid checkpoint: not a valid safetensors file (truncated or corrupt: "
            f"{_first_line(exc)})",
            field="model",
        ) from exc
    if not state_dict:
        raise SDStudioError(f"{p} is not a valid checkpoint: it holds no tensors", field="model")
    return state_dict, metadata


_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip


def _stream_safetensors(
    p: Path, keys: list[str], dtype: torch.dtype | None, skip: tuple[str, ...] = ()
) -> dict[str, torch.Tensor]:
    """Read each tensor with plain file reads into its own buffer, converting floats to ``dtype``;
    keys starting with one of ``skip`` become ``meta`` tensors (shape and dtype, nothing read).

    safetensors' ``get_tensor`` maps the whole file; the mapped pages count as the process's
    memory, so a 2 GB fp16 file loaded as bf16 peaked at 2 GB mapped + 2 GB converted. Reading
    tensor by tensor (format: u64 header size, JSON header with ``data_offsets``, data) keeps one
    tensor in the file's dtype at a time. Called after ``safe_open`` validated the header.
    """
    with open(p, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        base = 8 + size
        out: dict[str, torch.Tensor] = {}
        for key in sorted(keys, key=lambda k: header[k]["data_offsets"][0]):
            info = header[key]
            begin, end = info["data_offsets"]
            if skip and key.startswith(skip):
                out[key] = _cast(torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]], device="meta"), dtype)
                continue
            buf = torch.empty(info["shape"], dtype=_ST_DTYPES[info["dtype"]])
            raw = buf.view(-1).view(torch.uint8) if buf.numel() else buf.view(torch.uint8)
            if raw.numel() != end - begin:
                raise SDStudioError(f"{p}: tensor {key} has {end - begin} bytes for shape {info['shape']}")
            f.seek(base + begin)
            if raw.numel() and f.readinto(memoryview(raw.numpy())) != raw.numel():
                raise SDStudioError(f"{p} is truncated (tensor {key})", field="model")
            out[key] = _cast(buf, dtype)
    return {k: out[k] for k in keys}


class _InertStandIn:
    """Stand-in for the PyTorch Lightning callback objects that old SD .ckpt files store beside the
    weights (e.g. ``sd-v1-4.ckpt``: ``callbacks.ModelCheckpoint``). It keeps their state and runs
    nothing, like A1111's restricted unpickler, which allows ``pytorch_lightning.callbacks`` names."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


LIGHTNING_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
)


def _extra_safe_globals() -> list[Any]:
    """Return the data-only globals old checkpoints need beyond torch's weights-only defaults:
    inert Lightning callback stand-ins and numpy scalars/dtypes (``global_step`` as ``np.int64``)."""
    import numpy as np

    scalar = (np._core if hasattr(np, "_core") else np.core).multiarray.scalar
    allowed: list[Any] = [(_InertStandIn, name) for name in LIGHTNING_GLOBALS]
    allowed += [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(t)) for t in (np.int64, np.int32, np.float64, np.float32)]
    return allowed


def _read_pickle(p: Path) -> Checkpoint:
    try:
        with torch.serialization.safe_globals(_extra_safe_globals()):
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _blocked_global(exc):
            raise _not_a_checkpoint(p, exc) from exc
        raise SDStudioError(
            f"{p} needs arbitrary code execution to load (its pickle calls something other than tensor "
            f"rebuilders: {_pickle_reason(exc)}). sdstudio never unpickles code; convert the file to "
            ".safetensors with a tool you trust, or get a .safetensors release of the model",
            field="model",
        ) from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:
        raise _not_a_checkpoint(p, exc) from exc
    return _unwrap(obj, p)


def _blocked_global(exc: BaseException) -> bool:
    """True when torch's weights-only unpickler refused a global (a callable), not malformed bytes."""
    return any(word in str(exc) for word in ("GLOBAL", "Unsupported global"))


def _not_a_checkpoint(p: Path, exc: BaseException) -> SDStudioError:
    return SDStudioError(
        f"{p} is not a valid checkpoint: not a readable PyTorch checkpoint (truncated or corrupt: "
        f"{type(exc).__name__}: {_weights_only_reason(exc)})",
        field="model",
    )


def _weights_only_reason(exc: BaseException) -> str:
    """The line of torch's long weights-only message that says what went wrong."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1][:300]
    return _first_line(exc)


def _unwrap(obj: Any, p: Path) -> Checkpoint:
    import numpy as np

    if not isinstance(obj, dict):
        raise SDStudioError(
            f"{p} is not a valid checkpoint: it holds a {type(obj).__name__}, not a state dict of tensors",
            field="model",
        )
    step = obj.get("global_step")
    global_step = int(step) if isinstance(step, (int, np.integer)) and not isinstance(step, bool) else None
    raw_meta = obj.get(METADATA_KEY) if isinstance(obj.get(METADATA_KEY), dict) else {}
    while isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    state_dict = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state_dict:
        raise SDStudioError(
            f"{p} is not a valid checkpoint: it holds no tensors (keys: {_sample(obj.keys())})", field="model"
        )
    metadata = {str(k): str(v) for k, v in raw_meta.items()}
    return Checkpoint(state_dict, metadata, global_step, p)


def write_safetensors(
    state_dict: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state_dict`` as .safetensors (contiguous copies where needed) via a temp file + rename."""
    from safetensors.torch import save_file

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in state_dict.items()}
    tmp = p.with_name(p.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", **(metadata or {})})
    tmp.replace(p)
    return p


def metadata_json(metadata: dict[str, str], key: str) -> dict[str, Any] | None:
    """Return the JSON object stored under ``key`` in file metadata, or None (bad JSON counts as absent)."""
    raw = metadata.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _pickle_reason(exc: BaseException) -> str:
    """Return the line of torch's weights-only error that names the blocked global, if any."""
    for line in str(exc).splitlines():
        if "GLOBAL" in line:
            return line.strip()[:300]
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _sample(keys: Any, n: int = 8) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} in all)" if len(keys) > n else "") if keys else "none"
