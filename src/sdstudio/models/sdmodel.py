"""The loaded Stable Diffusion model: explicit components, no hidden state.

One ``StableDiffusionModel`` is what every pipeline takes. It holds diffusers/transformers
modules (UNet2DConditionModel, AutoencoderKL, CLIPTextModel[WithProjection]) plus the facts the
samplers need (noise schedule config, prediction type). Loading lives in ``sdstudio.models.loader``
and ``sdstudio.checkpoints``; this module only describes the result.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from sdstudio.backends.idle_weights import held_weights
from sdstudio.backends.openvino import restore_torch_decoder, restore_torch_unet
from sdstudio.families import family_of
from sdstudio.families.base import IDENTITY_LATENT, LatentFormat, ModelFamily, native_size

DEFAULTS_FILE = "sdstudio.json"  # in a model folder: {"default_steps": 20, "default_sampler": "...", ...}


@dataclass(frozen=True)
class ModelDefaults:
    """What a request that leaves a knob out gets on this model (None = the front end's own default).

    ``size`` is the native resolution; steps, sampler and CFG scale come from the model folder's
    ``sdstudio.json`` when its card declares them (the embedded model does).
    """

    size: int | None = None
    steps: int | None = None
    sampler: str | None = None
    cfg_scale: float | None = None

    @classmethod
    def read(
        cls, folder: str | Path | None, size: int | None = None, family: dict[str, Any] | None = None
    ) -> ModelDefaults:
        """Defaults declared in ``folder/sdstudio.json`` (missing or unreadable file: none), over the
        family's own (``family``: e.g. SD3's Euler, 28 steps, CFG 7 as its reference pipeline)."""
        data: dict[str, Any] = {}
        if folder is not None and (Path(folder) / DEFAULTS_FILE).is_file():
            try:
                data = json.loads((Path(folder) / DEFAULTS_FILE).read_text())
            except (OSError, ValueError):
                data = {}
        family = family or {}
        steps = data.get("default_steps", family.get("steps"))
        cfg = data.get("default_cfg_scale", family.get("cfg_scale"))
        sampler = data.get("default_sampler", family.get("sampler"))
        return cls(
            size=size,
            steps=int(steps) if isinstance(steps, int) and steps > 0 else None,
            sampler=sampler if isinstance(sampler, str) else None,
            cfg_scale=float(cfg) if isinstance(cfg, (int, float)) else None,
        )


@dataclass
class StableDiffusionModel:
    """A ready-to-sample model. ``arch`` is one of ``ARCHITECTURES`` in ``families.sd.architectures``."""

    name: str
    arch: str  # "sd1" | "sd2" | "sd2-v" | "sdxl" (+ "-inpaint" variants are flagged by is_inpainting)
    unet: Any  # diffusers.UNet2DConditionModel
    vae: Any  # diffusers.AutoencoderKL
    text_encoders: list[Any]  # [CLIPTextModel] or [CLIPTextModel, CLIPTextModelWithProjection] (SDXL)
    tokenizers: list[Any]  # transformers.CLIPTokenizer, one per text encoder
    scheduler_config: dict[str, Any]  # diffusers scheduler config: betas, prediction_type, ...
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    model_hash: str = ""  # A1111 "Model hash": sha256(file)[:10]
    path: str = ""
    vae_name: str = ""
    vae_hash: str = ""
    textual_inversion: Any = None  # per-encoder embedding lookups during one job (sdstudio.networks)
    vae_file: str = ""  # the separate VAE file in use ("" = the checkpoint's own)
    checkpoint_vae: Any = None  # the checkpoint's own VAE while a separate one is in use (networks.vae)
    compiled_unet: Any = None  # the UNet compiled by another runtime (backends.openvino), plain path
    compiled_decoder: Any = None  # the VAE decoder compiled likewise, used while it matches ``vae``
    backend: str = "torch"  # what runs the UNet: "torch" or "openvino" (models.loader's backend choice)
    tiny_vae: Any = None  # diffusers.AutoencoderTiny (TAESD, models.tiny_vae): fast mode's decoder
    compiled_tiny_decoder: Any = None  # the tiny VAE's decoder compiled by OpenVINO, while it matches
    idle_text_encoders: Any = None  # backends.idle_weights.IdleWeights: text encoders freed between jobs
    extras: dict[str, Any] = field(default_factory=dict)  # family data (families.base.ModelParts.extras)

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @cached_property
    def family(self) -> ModelFamily:
        """The model's family (``sdstudio.families``): model sampling, the model-call door, text encoding."""
        return family_of(self.arch)

    @property
    def is_inpainting(self) -> bool:
        return int(self.unet.config.in_channels) == 9

    @property
    def latent_channels(self) -> int:
        if self.vae is None:  # pixel space: the image's channels
            return int(self.unet.config.out_channels)
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD; 4 for the embedded emoji model; 1 in pixel space)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @cached_property
    def latent_format(self) -> LatentFormat:
        """Scale, shift and preview colours of this model's VAE latents (reset by :meth:`replace_vae`)."""
        if self.vae is None:
            return IDENTITY_LATENT
        return self.family.latent_format(dict(self.vae.config))

    @cached_property
    def sampling(self):
        """The family's :class:`~sdstudio.families.model_sampling.ModelSampling` for this model."""
        return self.family.model_sampling(self.scheduler_config)

    # What callers above ask of the backend; none of them needs to know which backend frees what.

    def text_encoders_held(self):
        """A context in which the text encoders' weights are loaded (the backend may free them between jobs)."""
        return held_weights(self.idle_text_encoders) if self.idle_text_encoders is not None else nullcontext()

    @property
    def backend_label(self) -> str | None:
        """The infotext's "Backend" (what, besides the request, decides the exact pixels): None on PyTorch,
        the reference path; ``OpenVINO bf16, 2 threads`` where a compiled UNet runs (its bf16 results
        depend on the thread count: up to a few levels per pixel)."""
        if self.compiled_unet is None:
            return None
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")
        threads = self.compiled_unet.threads
        return f"OpenVINO {precision}, {threads} thread{'s' if threads != 1 else ''}"

    def release_text_encoders(self) -> None:
        """Let the backend free the text encoders' weights until the next prompt (a no-op where it keeps them)."""
        if self.idle_text_encoders is not None:
            self.idle_text_encoders.release()

    def ensure_torch_unet(self) -> None:
        """Make the PyTorch UNet's weights present (a compiled backend may have freed them)."""
        restore_torch_unet(self)

    def ensure_torch_decoder(self) -> None:
        """Make the PyTorch VAE decoder's weights present (a compiled backend may have freed them)."""
        restore_torch_decoder(self)

    @property
    def vae_scaling_factor(self) -> float:
        return self.latent_format.scaling_factor

    @property
    def vae_shift_factor(self) -> float:
        return self.latent_format.shift_factor

    @property
    def native_size(self) -> int:
        """Pixel size the model was trained at: UNet sample_size x VAE factor (64 embedded, 512 SD 1.5)."""
        return native_size(dict(self.unet.config), dict(self.vae.config) if self.vae is not None else None)

    @property
    def defaults(self) -> ModelDefaults:
        """Native size plus the defaults declared beside a model folder (``sdstudio.json``)."""
        folder = Path(self.path) if self.path and Path(self.path).is_dir() else None
        return ModelDefaults.read(folder, self.native_size, self.family.defaults)

    def replace_vae(self, vae: Any, name: str = "", vae_hash: str = "") -> None:
        """Use another VAE (A1111 VAE swap); its latent facts replace the old ones."""
        self.vae, self.vae_name, self.vae_hash = vae, name, vae_hash
        self.__dict__.pop("latent_format", None)

    @property
    def torch_modules(self) -> list[Any]:
        """Every torch module of the model: UNet, VAE, text encoders and the tiny VAE if there is one."""
        vae = [self.vae] if self.vae is not None else []
        tiny = [self.tiny_vae] if self.tiny_vae is not None else []
        return [self.unet, *vae, *self.text_encoders, *tiny]

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> StableDiffusionModel:
        """Move all modules in place and return self."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for module in self.torch_modules:
            # plain nn.Module.to: diffusers' override logs a spurious fp32-modules warning on every cast
            torch.nn.Module.to(module, device=self.device, dtype=self.dtype)
        return self

    def eval(self) -> StableDiffusionModel:
        for module in self.torch_modules:
            module.eval().requires_grad_(False)
        return self
