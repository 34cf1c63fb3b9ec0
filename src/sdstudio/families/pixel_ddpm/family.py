"""The pixel DDPM's side of the seam: identity latents, eps/v on its schedule, a class-label door."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.families.base import IDENTITY_LATENT, LatentFormat
from sdstudio.families.model_sampling import DiscreteModelSampling
from sdstudio.prompts.encode import Conditioning

ARCH = "pixel-ddpm"
CLASSES_KEY = "classes"  # ModelParts.extras: {caption: class id} of a class-conditional model


@dataclass(frozen=True)
class PixelDDPMFamily:
    """:class:`~sdstudio.families.base.ModelFamily` of a pixel-space DDPM."""

    name: str = ARCH
    pixel_space: bool = True
    speed_techniques: tuple[str, ...] = ()  # DeepCache/ToMe/ToDo/OpenVINO are built for the SD UNet
    clip_layout: Any = None  # no CLIP text encoder

    @property
    def defaults(self) -> dict[str, Any]:
        """None of its own: the front end's (or a folder's ``sdstudio.json``)."""
        return {}

    def latent_format(self, vae_config: dict[str, Any]) -> LatentFormat:
        return IDENTITY_LATENT

    def model_sampling(self, scheduler_config: dict[str, Any]) -> DiscreteModelSampling:
        """eps or v on the DDPM's own betas (``scheduler/scheduler_config.json``)."""
        return DiscreteModelSampling.from_config(scheduler_config)

    def count_chunks(self, model: Any, text: str) -> int:
        return 1

    def encode_text(self, model: Any, text: str, clip_skip: int, chunks: int, width: int, height: int):
        """The prompt as a class label (class-conditional models; exact caption, case and spaces trimmed);
        no input at all for an unconditional model."""
        classes = model.extras.get(CLASSES_KEY) or {}
        if not classes:
            return Conditioning(None)
        null = max(classes.values()) + 1  # the label condition dropout trained as "unconditional"
        label = classes.get(text.strip(), classes.get(text.strip().lower(), null))
        return Conditioning(None, extra={"class_labels": torch.tensor([label])})

    def apply_model(
        self, unet: Any, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning, device, dtype
    ) -> torch.Tensor:
        """``UNet2DModel(x, t, class_labels)``: its raw eps/v output for (B, 3, H, W) ``x_in``."""
        labels = cond.extra.get("class_labels")
        labels = labels.to(device) if labels is not None else None
        return unet(x_in.to(device, dtype), t, class_labels=labels, return_dict=False)[0]


FAMILY = PixelDDPMFamily()
