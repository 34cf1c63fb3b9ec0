"""Model families: one folder each, one registry list (``FAMILY_LOADERS``).

Adding a family is a folder under ``sdstudio/families/`` that provides a
:class:`~sdstudio.families.base.FamilyLoader` and one line in ``FAMILY_LOADERS`` below. Shared code
asks :func:`loader_for` which family reads a path and :func:`family_of` for a loaded model's
:class:`~sdstudio.families.base.ModelFamily`; it never branches on a family's name.
"""

from __future__ import annotations

from pathlib import Path

from sdstudio.errors import SDStudioError
from sdstudio.families.base import FamilyLoader, ModelFamily, read_model_index
from sdstudio.families.pixel_ddpm.load import LOADER as PIXEL_DDPM
from sdstudio.families.sd.load import LOADER as SD
from sdstudio.families.sd3.load import LOADER as SD3

FAMILY_LOADERS: tuple[FamilyLoader, ...] = (PIXEL_DDPM, SD3, SD)  # the registry: first claim wins


def loader_for(path: Path) -> FamilyLoader:
    """The family that reads ``path`` (a diffusers folder or a single file); SDStudioError if none."""
    if path.is_dir():
        index = read_model_index(path)
        for loader in FAMILY_LOADERS:
            if loader.claims_folder(path, index):
                return loader
        raise SDStudioError(
            f"{path} is not a model folder any family reads (model_index.json class "
            f"{index.get('_class_name')!r}); supported: {supported()}",
            field="model",
        )
    keys = _file_keys(path)
    for loader in FAMILY_LOADERS:
        if keys is not None and loader.claims_file(keys):
            return loader
    return SD  # pickles (read whole only when loading) and unknown layouts: SD explains what it expected


def family_of(arch: str) -> ModelFamily:
    """The :class:`ModelFamily` of a loaded model's ``arch`` ("sd1", "sd2-v", "sdxl", "pixel-ddpm")."""
    for loader in FAMILY_LOADERS:
        family = loader.family(arch)
        if family is not None:
            return family
    raise SDStudioError(f"unknown model architecture {arch!r}; supported: {supported()}", field="model")


def supported() -> str:
    return ", ".join(loader.description for loader in FAMILY_LOADERS)


def _file_keys(path: Path) -> list[str] | None:
    """A safetensors file's tensor names from its header (None for other formats)."""
    if path.suffix.lower() != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return list(f.keys())
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None  # the family's own reader reports what is wrong with the file
