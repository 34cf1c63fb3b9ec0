"""The loaded Stable Diffusion model: explicit components, no hidden state.

One ``StableDiffusionModel`` is what every pipeline takes. It holds diffusers/transformers
modules (UNet2DConditionModel, AutoencoderKL, CLIPTextModel[WithProjection]) plus the facts the
samplers need (noise schedule config, prediction type). Loading lives in ``sdstudio.models.loader``
and ``sdstudio.checkpoints``; this module only describes the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StableDiffusionModel:
    """A ready-to-sample model. ``arch`` is one of ``ARCHITECTURES`` in ``models.architectures``."""

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

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def is_sdxl(self) -> bool:
        return len(self.text_encoders) == 2

    @property
    def is_inpainting(self) -> bool:
        return int(self.unet.config.in_channels) == 9

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD; 4 for the embedded emoji model)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StableDiffusionModel:
        """Move all modules in place and return self."""
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for module in [self.unet, self.vae, *self.text_encoders]:
            # plain nn.Module.to: diffusers' override logs a spurious fp32-modules warning on every cast
            torch.nn.Module.to(module, device=self.device, dtype=self.dtype)
        return self

    def eval(self) -> StableDiffusionModel:
        for module in [self.unet, self.vae, *self.text_encoders]:
            module.eval().requires_grad_(False)
        return self
