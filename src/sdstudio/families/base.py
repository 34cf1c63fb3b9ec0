"""The seam every model family plugs into: what shared code may ask of a family.

A family folder (``sdstudio/families/<name>/``) provides a :class:`FamilyLoader` (detection and
loading of its files) and, per loaded model, a :class:`ModelFamily` (the family's side of sampling:
model sampling, the one model-call door, text conditioning, latent format). The registry in
``sdstudio/families/__init__.py`` is one list of loaders; detection, the loader, the sampling loop,
pipelines and previews consume only these objects (ComfyUI ``supported_models`` + ``model_sampling``
+ ``BaseModel.apply_model``; k-diffusion's denoiser wrappers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from sdstudio.errors import SDStudioError
from sdstudio.families.model_sampling import ModelSampling
from sdstudio.prompts.encode import Conditioning


@dataclass(frozen=True)
class LatentFormat:
    """How a VAE's latents relate to pixels (ComfyUI ``latent_formats``): scale, shift, preview colours.

    ``rgb_factors`` (C, 3) is the linear latent -> RGB map of the live preview (A1111
    ``sd_vae_approx.cheap_approximation``); None for a VAE whose latent space is not a published one
    (e.g. the embedded model's own VAE): previews then decode with the VAE itself.
    """

    scaling_factor: float
    shift_factor: float = 0.0
    rgb_factors: tuple[tuple[float, float, float], ...] | None = None

    def to_latent(self, z: torch.Tensor) -> torch.Tensor:
        """VAE mean -> the latents samplers work on: ``(z - shift) * scale``."""
        return (z - self.shift_factor) * self.scaling_factor

    def to_vae(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampler latents -> what the VAE decoder takes: ``latents / scale + shift``."""
        return latents / self.scaling_factor + self.shift_factor


IDENTITY_LATENT = LatentFormat(1.0)  # pixel-space models: the "latent" is the image in [-1, 1]


class ModelFamily(Protocol):
    """A loaded model's family: the facts and the call door shared code uses (no family branches)."""

    name: str
    pixel_space: bool  # True: no VAE, latents are pixels in [-1, 1] (identity latent format)
    speed_techniques: tuple[str, ...]  # which of deepcache, tome, todo, openvino apply
    defaults: dict[str, Any]  # request defaults of the family (sampler, steps, cfg_scale), may be empty

    def latent_format(self, vae_config: dict[str, Any]) -> LatentFormat: ...

    def model_sampling(self, scheduler_config: dict[str, Any]) -> ModelSampling: ...

    def count_chunks(self, model: Any, text: str) -> int: ...

    def encode_text(
        self, model: Any, text: str, clip_skip: int, chunks: int, width: int, height: int
    ) -> Conditioning: ...

    def apply_model(
        self, unet: Any, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning, device, dtype
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class ModelInfo:
    """What a model file or folder is, read without building the model (safetensors: header only)."""

    path: str
    format: str  # "diffusers" | "safetensors" | "pickle"
    arch: str  # config folder name: "sd1", "sd1-inpaint", "sd2", "sd2-v", "sdxl", ...
    model_arch: str  # StableDiffusionModel.arch
    inpainting: bool
    prediction_type: str
    parameters: int  # UNet + VAE + text encoders (single files: every tensor in the file)
    dtypes: tuple[str, ...]
    native_size: int | None = None  # pixels the model was trained at (:func:`native_size`)


def native_size(unet_config: dict[str, Any], vae_config: dict[str, Any] | None) -> int:
    """The one rule for a model's native pixel size: the UNet's ``sample_size`` x the VAE's downscale
    ``2**(len(block_out_channels) - 1)`` (64 for the embedded model, 512 for SD 1.5, 1024 for SDXL);
    a pixel-space model (``vae_config`` None) works at ``sample_size`` pixels."""
    size = int(unet_config["sample_size"])
    return size if vae_config is None else size * 2 ** (len(vae_config["block_out_channels"]) - 1)


@dataclass(frozen=True)
class ModelParts:
    """What a family's ``load`` builds: modules and facts, before placement and a backend (``models.loader``)."""

    name: str
    arch: str  # the family's variant name ("sd1", "sd2-v", "sdxl", "pixel-ddpm", ...)
    unet: Any  # the denoising network
    vae: Any  # an autoencoder, or None for a pixel-space model
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any]  # diffusers scheduler config: betas, prediction_type, ...
    path: str = ""
    extras: dict[str, Any] = field(default_factory=dict)  # family data, e.g. a class vocabulary


@dataclass(frozen=True)
class FamilyLoader:
    """How one family folder recognises and loads its files (an entry of the registry).

    ``claims_folder(folder, model_index)`` and ``claims_file(keys)`` (original-layout state-dict
    keys) answer whether the family reads that model; ``load(path, options)`` returns the model;
    ``inspect(path, prediction_type)`` what it is without loading the weights; ``family(arch)`` the
    :class:`ModelFamily` of a model it loaded (None for another family's ``arch``).
    """

    name: str
    description: str  # for messages: "sd (SD 1.x, 2.x, XL)"
    claims_folder: Any  # Callable[[Path, dict], bool]
    claims_file: Any  # Callable[[Collection[str]], bool]
    load: Any  # Callable[[Path, LoadOptions], ModelParts]
    inspect: Any  # Callable[[Path, str | None], ModelInfo]
    family: Any  # Callable[[str], ModelFamily | None]: the family of a loaded model's ``arch``


@dataclass(frozen=True)
class LoadOptions:
    """What a family's ``load`` needs besides the path (the loader decides these)."""

    prediction_type: str | None = None
    dtype: torch.dtype | None = None
    lazy_unet: bool = False  # leave the denoiser's weights unread (a cached compiled graph runs it)
    only: str | None = None  # "unet" | "vae" | "text": read only that component's weights


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def st_dtype(name: str) -> str:
    """Return the torch name ("float16") of a safetensors dtype tag ("F16")."""
    return _SAFETENSORS_DTYPES.get(str(name).upper(), str(name).lower())


def folder_tensor_stats(folder: Path, pattern: str = "*/*.safetensors") -> tuple[int, tuple[str, ...]]:
    """Return (parameter count, dtypes) over a diffusers folder's safetensors weights (headers only;
    ``pattern`` picks the weights files)."""
    from safetensors import safe_open

    total, dtypes = 0, set()
    for f in sorted(folder.glob(pattern)):
        with safe_open(str(f), framework="pt", device="cpu") as st:
            for key in st.keys():  # noqa: SIM118
                view = st.get_slice(key)
                total += math.prod(view.get_shape())
                dtypes.add(st_dtype(view.get_dtype()))
    return total, tuple(sorted(dtypes))


def read_json_file(file: Path) -> dict[str, Any]:
    """A model folder's JSON config as a dict; SDStudioError naming the file when it is missing or bad."""
    import json

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SDStudioError(f"cannot read {file}: {exc}", field="model") from exc
    if not isinstance(data, dict):
        raise SDStudioError(f"{file} is not a JSON object", field="model")
    return data


def read_model_index(folder: Path) -> dict[str, Any]:
    """A diffusers folder's ``model_index.json`` ({} when it has none or it is not JSON)."""
    import json

    try:
        return json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
