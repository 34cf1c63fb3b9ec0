"""SD3's side of the seam: flow sampling, CLIP-L + CLIP-G (+ T5) conditioning, the MMDiT door."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.families.base import LatentFormat
from sdstudio.families.model_sampling import FlowModelSampling
from sdstudio.prompts.encode import ClipLayout, Conditioning, count_chunks, encode_clip, text_embeddings

ARCH = "sd3"
T5_TOKENS = 256  # diffusers StableDiffusion3Pipeline max_sequence_length


@dataclass(frozen=True)
class SD3Family:
    """:class:`~sdstudio.families.base.ModelFamily` of SD 3 / 3.5 models."""

    name: str = ARCH
    pixel_space: bool = False
    speed_techniques: tuple[str, ...] = ()
    clip_layout: ClipLayout = ClipLayout(penultimate_raw=True, pooled_encoders=(0, 1))  # noqa: RUF009

    @property
    def defaults(self) -> dict[str, Any]:
        """diffusers' ``StableDiffusion3Pipeline`` defaults: flow Euler, 28 steps, guidance 7."""
        return {"sampler": "Euler", "steps": 28, "cfg_scale": 7.0}

    def latent_format(self, vae_config: dict[str, Any]) -> LatentFormat:
        """SD3's VAE: ``(z - shift) * scale`` (1.5305, 0.0609 in the released VAE config)."""
        return LatentFormat(float(vae_config["scaling_factor"]), float(vae_config.get("shift_factor") or 0.0))

    def model_sampling(self, scheduler_config: dict[str, Any]) -> FlowModelSampling:
        return FlowModelSampling(scheduler_config)

    def count_chunks(self, model: Any, text: str) -> int:
        return count_chunks(model.tokenizers[0], text, text_embeddings(model)[0])

    def encode_text(self, model: Any, text: str, clip_skip: int, chunks: int, width: int, height: int):
        """diffusers ``StableDiffusion3Pipeline.encode_prompt``: CLIP-L and CLIP-G penultimate states
        side by side, zero-padded to the joint width, then T5's 256 tokens (zeros without T5);
        pooled = both CLIPs' projected pooled embeddings. CLIP parts are A1111-chunked and weighted."""
        joint = int(model.unet.config.joint_attention_dim)
        with model.text_encoders_held():
            clip = encode_clip(
                model.text_encoders[:2], model.tokenizers[:2], text_embeddings(model)[:2], model.device,
                [text], clip_skip, chunks, self.clip_layout,
            )  # fmt: skip
            t5 = self._t5(model, text, joint)  # (1, 256, joint)
        context = torch.nn.functional.pad(
            clip.context, (0, joint - clip.context.shape[-1])
        )  # (1, 77k, joint)
        return Conditioning(torch.cat([context, t5], dim=1), clip.pooled)

    @staticmethod
    def _t5(model: Any, text: str, joint: int) -> torch.Tensor:
        if len(model.text_encoders) < 3:
            return torch.zeros(1, T5_TOKENS, joint)
        ids = model.tokenizers[2](
            [text], padding="max_length", max_length=T5_TOKENS, truncation=True, return_tensors="pt"
        ).input_ids
        return model.text_encoders[2](ids.to(model.device))[0].float()

    def apply_model(
        self, unet: Any, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning, device, dtype
    ) -> torch.Tensor:
        """The MMDiT's velocity for (B, 16, h, w) ``x_in`` at timestep ``t`` = sigma * 1000."""
        return unet(
            hidden_states=x_in.to(device, dtype),
            timestep=t,
            encoder_hidden_states=cond.context.to(device, dtype),
            pooled_projections=cond.pooled.to(device, dtype),
            return_dict=False,
        )[0]


FAMILY = SD3Family()
