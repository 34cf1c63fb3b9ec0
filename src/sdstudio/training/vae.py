"""``train vae``: a small KL autoencoder (diffusers ``AutoencoderKL``), as the first stage of latent diffusion.

Rombach et al. 2022 (LDM) train the autoencoder with a reconstruction loss plus a small KL term
towards N(0, I) (their perceptual and GAN losses are left out here), then scale latents by
``1 / std(z)`` measured on data so the diffusion model sees unit variance (SD 1.x: 0.18215).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sdstudio.training.data import ImageTextSet
from sdstudio.training.loop import LoopConfig, LoopResult, image_grid, to_pil, train_loop


@dataclass
class VAEConfig:
    """Architecture and loss of the autoencoder; len(block_out_channels) - 1 = number of 2x downsamples."""

    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 32
    image_size: int = 64
    recon: str = "l1"  # "l1" | "mse" | "l1+mse"
    kl_weight: float = 1e-5  # times the KL per latent element (mean), added to the per-pixel recon loss


def build_vae(cfg: VAEConfig, seed: int = 0):
    """Return a freshly initialised ``AutoencoderKL`` for ``cfg`` (seeded)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
    )


class VAELoss(nn.Module):
    """``forward(x, noise) -> recon + kl_weight * KL``; z = mean + std * noise (reparameterisation)."""

    def __init__(self, vae, recon: str, kl_weight: float):
        super().__init__()
        self.vae, self.recon, self.kl_weight = vae, recon, kl_weight

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * noise  # (B, 4, H/f, W/f)
        rec = self.vae.decode(z).sample.float()
        loss = 0.0
        if "l1" in self.recon:
            loss = loss + (rec - x).abs().mean()
        if "mse" in self.recon:
            loss = loss + (rec - x).pow(2).mean()
        kl = 0.5 * (post.mean.float().pow(2) + post.var.float() - 1.0 - post.logvar.float()).mean()
        return loss + self.kl_weight * kl


@torch.no_grad()
def latent_scaling_factor(vae, images: torch.Tensor, batch: int = 256, seed: int = 0) -> float:
    """Return 1 / std of sampled latents over ``images`` (uint8 ``(N, 3, H, W)``), as SD measured 0.18215."""
    gen = torch.Generator().manual_seed(seed)
    device = next(vae.parameters()).device
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, images.shape[0], batch):
        x = images[i : i + batch].float().div(127.5).sub(1).to(device)
        post = vae.encode(x).latent_dist
        z = (post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(device)).double()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
        count += z.numel()
    var = total_sq / count - (total / count) ** 2
    return float(1.0 / max(var, 1e-12) ** 0.5)


class VAETask:
    """The loop's view of VAE training: batches, reconstruction grids, export with scaling factor."""

    name = "vae"
    ema_decay = None

    def __init__(self, cfg: VAEConfig, data: ImageTextSet, seed: int = 0):
        self.cfg, self.data = cfg, data
        self.model = VAELoss(build_vae(cfg, seed), cfg.recon, cfg.kl_weight)
        self.factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.preview = data.images[torch.linspace(0, len(data) - 1, min(8, len(data))).long()]

    def setup(self, device: torch.device) -> None:
        self.device = device

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict:
        b, _, h, w = images.shape
        shape = (b, self.cfg.latent_channels, h // self.factor, w // self.factor)
        return {"x": images, "noise": torch.randn(shape, generator=gen).to(images.device)}

    def sample_grid(self, model: VAELoss):
        x = self.preview.float().div(127.5).sub(1).to(self.device)
        rec = model.vae.decode(model.vae.encode(x).latent_dist.mean).sample
        return image_grid(to_pil(x) + to_pil(rec), cols=len(x))

    def export(self, model: VAELoss, out: Path) -> None:
        vae = model.vae.eval()
        with torch.autocast(self.device.type, enabled=False):
            scale = latent_scaling_factor(vae.float(), self.data.images)
        vae.register_to_config(scaling_factor=scale)
        vae.save_pretrained(out / "vae", safe_serialization=True)


def train_vae(data: ImageTextSet, loop: LoopConfig, cfg: VAEConfig | None = None) -> LoopResult:
    """Train an ``AutoencoderKL`` on ``data``; the result lands in ``loop.out_dir/final/vae``."""
    return train_loop(VAETask(cfg or VAEConfig(), data, loop.seed), data, loop)
