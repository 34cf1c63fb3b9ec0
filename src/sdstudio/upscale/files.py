"""Upscaler files in the folders A1111 and ComfyUI use, with A1111-style names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sdstudio.errors import SDStudioError
from sdstudio.upscale.load import UPSCALER_SUFFIXES

# models/<folder>: A1111 (ESRGAN, RealESRGAN, SwinIR; DAT and HAT in Forge) and ComfyUI (upscale_models)
UPSCALER_FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "upscale_models")
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")  # A1111's upscalers that need no file


@dataclass(frozen=True)
class UpscalerFile:
    """One upscaler model file: ``name`` is the file stem (A1111 ``UpscalerData.name``)."""

    name: str
    path: Path
    folder: str  # which of UPSCALER_FOLDERS it was found in

    @property
    def scale(self) -> int | None:
        """The scale its name states (``4x-UltraSharp``, ``RealESRGAN_x4plus``, ``2xNomos``), else None;
        the file itself is not read to list it."""
        return scale_from_name(self.name)


def scale_from_name(name: str) -> int | None:
    """``4x_foo`` / ``foo_x2`` / ``4xfoo`` -> 4 / 2 / 4; None when the name says no scale.

    >>> scale_from_name("RealESRGAN_x4plus"), scale_from_name("4x-UltraSharp"), scale_from_name("SwinIR")
    (4, 4, None)
    """
    m = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", name.lower())
    if m is None:
        return None
    return int(m.group(1) or m.group(2))


def find_upscalers(models_dir: Path | None) -> list[UpscalerFile]:
    """Upscaler files under ``models_dir/<folder>`` for every folder of :data:`UPSCALER_FOLDERS`
    (recursively, sorted by name); the first file of a name wins, built-in names are skipped."""
    if models_dir is None:
        return []
    found: dict[str, UpscalerFile] = {}
    builtin = {n.lower() for n in BUILTIN_UPSCALERS}
    for folder in UPSCALER_FOLDERS:
        root = Path(models_dir) / folder
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in UPSCALER_SUFFIXES and p.stem.lower() not in builtin:
                found.setdefault(p.stem.lower(), UpscalerFile(p.stem, p, folder))
    return sorted(found.values(), key=lambda f: f.name.lower())


def find_upscaler(files: list[UpscalerFile], name: str) -> UpscalerFile:
    """The file named ``name`` (case-insensitive; file name with suffix also matches), else a 422
    listing what is installed."""
    key = (name or "").strip().lower()
    for f in files:
        if key in (f.name.lower(), f.path.name.lower()):
            return f
    known = ", ".join([*BUILTIN_UPSCALERS, *(f.name for f in files)])
    raise SDStudioError(f"unknown upscaler {name!r}; installed: {known}", field="upscaler")
