"""``train ldm``: text-to-image latent diffusion (Rombach et al. 2022), Stable Diffusion's recipe made small.

A ``UNet2DConditionModel`` learns eps (or v) on the frozen VAE's scaled latents, cross-attending to
the frozen mini-CLIP text encoder's last hidden states; 10% of captions are replaced by the empty
prompt so classifier-free guidance (Ho & Salimans 2022) works at sampling time; EMA weights are
exported. The output is a complete diffusers Stable Diffusion folder (see :mod:`.export`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdstudio.training import diffusion
from sdstudio.training.data import ImageTextSet
from sdstudio.training.loop import LoopConfig, LoopResult, image_grid, to_pil, train_loop
from sdstudio.training.miniclip import TokenCache

PREVIEW_PROMPTS = (
    "cat face",
    "red heart",
    "pizza",
    "rocket",
    "princess",
    "trumpet",
    "smiling face with sunglasses",
    "flag of Japan",
)


@dataclass
class LDMConfig:
    """UNet architecture and diffusion settings; ``cross_attention_dim`` must equal the text encoder width."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    down_block_types: tuple[str, ...] = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    attention_heads: int = 4
    norm_num_groups: int = 32
    schedule: str = "scaled_linear"
    prediction: str = "eps"
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    guidance: float = 5.0
    preview_prompts: tuple[str, ...] = field(default=PREVIEW_PROMPTS)
    preview_steps: int = 25


def build_unet(cfg: LDMConfig, latent_channels: int, latent_size: int, context_dim: int, seed: int = 0):
    """Return a freshly initialised ``UNet2DConditionModel`` (up blocks mirror the down blocks)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    up = tuple(b.replace("Down", "Up") for b in reversed(cfg.down_block_types))
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(cfg.down_block_types),
        up_block_types=up,
        cross_attention_dim=context_dim,
        attention_head_dim=cfg.attention_heads,  # diffusers' legacy name for the number of heads
        norm_num_groups=cfg.norm_num_groups,
    )


class DiffusionLoss(nn.Module):
    """``forward(x0, noise, t, context=None, class_labels=None)``: MSE between the UNet output and eps/v."""

    def __init__(self, unet: nn.Module, sched_config: dict):
        super().__init__()
        self.unet = unet
        self.prediction = sched_config["prediction_type"]
        self.register_buffer("abar", diffusion.alphas_cumprod(sched_config), persistent=False)

    def forward(self, x0, noise, t, context=None, class_labels=None) -> torch.Tensor:
        x_t = diffusion.q_sample(x0, noise, t, self.abar)
        kwargs = {}
        if context is not None:
            kwargs["encoder_hidden_states"] = context
        if class_labels is not None:
            kwargs["class_labels"] = class_labels
        out = self.unet(x_t, t, **kwargs).sample
        return F.mse_loss(out.float(), diffusion.target(x0, noise, t, self.abar, self.prediction).float())


def drop_captions(captions: list[str], p: float, gen: torch.Generator) -> list[str]:
    """Return ``captions`` with each replaced by "" with probability ``p`` (classifier-free guidance training)."""
    keep = torch.rand(len(captions), generator=gen) >= p
    return [c if k else "" for c, k in zip(captions, keep.tolist())]


class LDMTask:
    """Latent diffusion over frozen VAE + frozen text encoder (from folders or objects)."""

    name = "ldm"

    def __init__(self, cfg: LDMConfig, vae, text_encoder, seed: int = 0):
        from sdstudio.training.export import SD_STYLE_SCHEDULER

        self.cfg, self.vae, self.text_encoder = cfg, vae.eval().requires_grad_(False), text_encoder
        self.text_encoder.eval().requires_grad_(False)
        self.ema_decay = cfg.ema_decay
        self.sched_config = {**SD_STYLE_SCHEDULER, **diffusion.scheduler_config(cfg.schedule, cfg.prediction)}
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (vae.config.latent_channels, vae.config.sample_size // factor)
        unet = build_unet(
            cfg, self.latent_shape[0], self.latent_shape[1], text_encoder.config.hidden_size, seed
        )
        self.model = DiffusionLoss(unet, self.sched_config)
        self.scale = float(vae.config.scaling_factor)
        self.tokens = TokenCache()

    def setup(self, device: torch.device) -> None:
        self.device = device
        self.vae.to(device)
        self.text_encoder.to(device)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Return the frozen text encoder's last hidden states ``(B, 77, D)``."""
        return self.text_encoder(input_ids=self.tokens(captions, self.device)).last_hidden_state

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict:
        with torch.no_grad():
            post = self.vae.encode(images).latent_dist
            eps = torch.randn(post.mean.shape, generator=gen).to(images.device)
            x0 = (post.mean + post.std * eps) * self.scale  # (B, 4, h, w)
        noise, t = diffusion.draw_noise_and_t(tuple(x0.shape), 1000, gen, images.device)
        context = self.encode_text(drop_captions(captions, self.cfg.caption_dropout, gen))
        return {"x0": x0.float(), "noise": noise, "t": t, "context": context}

    @torch.no_grad()
    def generate(self, unet, prompts: list[str], seed: int = 0, steps: int = 25, guidance: float = 5.0):
        """Return images ``(B, 3, H, W)`` in [-1, 1] for ``prompts`` by DDIM with CFG."""
        cond = self.encode_text(list(prompts))
        uncond = self.encode_text([""] * len(prompts))
        context = torch.cat([uncond, cond])

        def denoise(x, t):
            out = unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=context).sample
            u, c = out.chunk(2)
            return u + guidance * (c - u)

        c, s = self.latent_shape
        z = diffusion.ddim_sample(
            denoise, (len(prompts), c, s, s), self.sched_config, steps, seed, self.device
        )
        return self.vae.decode(z / self.scale).sample

    def sample_grid(self, model: DiffusionLoss):
        prompts = list(self.cfg.preview_prompts)
        x = self.generate(model.unet, prompts, 0, self.cfg.preview_steps, self.cfg.guidance)
        return image_grid(to_pil(x), cols=len(prompts), labels=prompts)

    def export(self, model: DiffusionLoss, out: Path) -> None:
        from sdstudio.training.export import save_scheduler

        model.unet.save_pretrained(out / "unet", safe_serialization=True)
        save_scheduler(self.sched_config, out / "scheduler")


def train_ldm(
    data: ImageTextSet, loop: LoopConfig, vae, text_encoder, cfg: LDMConfig | None = None
) -> LoopResult:
    """Train the text-conditional UNet on ``data``; writes ``final/unet`` and ``final/scheduler``."""
    return train_loop(LDMTask(cfg or LDMConfig(), vae, text_encoder, loop.seed), data, loop)
