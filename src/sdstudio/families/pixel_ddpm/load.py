"""Reading a pixel DDPM folder (``sdstudio train ddpm``'s ``final/``: diffusers ``DDPMPipeline`` layout)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.families.base import (
    FamilyLoader,
    LoadOptions,
    ModelInfo,
    ModelParts,
    folder_tensor_stats,
    native_size,
    read_json_file,
)
from sdstudio.families.model_sampling import PREDICTION_TYPES
from sdstudio.families.pixel_ddpm.family import ARCH, CLASSES_KEY, FAMILY, PixelDDPMFamily

PIPELINE_CLASS = "DDPMPipeline"


def claims_folder(folder: Path, index: dict[str, Any]) -> bool:
    """A diffusers ``DDPMPipeline`` folder (a pixel UNet and a scheduler, no VAE)."""
    return index.get("_class_name") == PIPELINE_CLASS


def claims_file(keys: Collection[str]) -> bool:
    return False  # published as folders only


def load(path: Path, options: LoadOptions) -> ModelParts:
    """Build the UNet (``UNet2DModel``), read the schedule and the class vocabulary."""
    from diffusers import UNet2DModel

    unet_config = read_json_file(path / "unet" / "config.json")
    if unet_config.get("_class_name") != "UNet2DModel":
        raise SDStudioError(
            f"{path}: a {unet_config.get('_class_name')} pixel DDPM (text-conditioned) cannot be loaded in "
            "the studio yet; unconditional and class-conditional ones (UNet2DModel) can",
            field="model",
        )
    try:
        unet = UNet2DModel.from_pretrained(str(path), subfolder="unet", local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        raise SDStudioError(
            f"cannot load unet from {path}: {str(exc).splitlines()[0]}", field="model"
        ) from exc
    scheduler = {k: v for k, v in _scheduler(path).items() if not k.startswith("_")}
    if options.prediction_type:
        scheduler["prediction_type"] = options.prediction_type
    classes = _classes(path) if unet_config.get("num_class_embeds") else {}
    return ModelParts(path.name, ARCH, unet, None, [], [], scheduler, str(path), {CLASSES_KEY: classes})


def inspect(path: Path, prediction_type: str | None = None) -> ModelInfo:
    """What a pixel DDPM folder is, from its configs and safetensors headers."""
    params, dtypes = folder_tensor_stats(path, "unet/*.safetensors")
    prediction = prediction_type or _scheduler(path).get("prediction_type", "epsilon")
    size = native_size(read_json_file(path / "unet" / "config.json"), None)
    return ModelInfo(str(path), "diffusers", ARCH, ARCH, False, prediction, params, dtypes, size)


def family(arch: str) -> PixelDDPMFamily | None:
    return FAMILY if arch == ARCH else None


def _scheduler(path: Path) -> dict[str, Any]:
    config = read_json_file(path / "scheduler" / "scheduler_config.json")
    if config.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise SDStudioError(
            f"{path}: unsupported prediction type {config.get('prediction_type')!r}", field="model"
        )
    return config


def _classes(path: Path) -> dict[str, int]:
    """``classes.json`` (caption -> class id), checked: string keys, non-negative int ids."""
    data = read_json_file(path / "classes.json") if (path / "classes.json").is_file() else {}
    if not all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in data.items()):
        raise SDStudioError(f"{path / 'classes.json'} must map captions to class ids", field="model")
    return data


LOADER = FamilyLoader(
    "pixel-ddpm", "pixel-ddpm (sdstudio train ddpm)", claims_folder, claims_file, load, inspect, family
)
