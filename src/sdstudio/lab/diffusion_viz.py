"""The DDPM visualiser: "demolish" (forward process) and "build" (reverse trajectory) as strips and GIFs.

Demolish draws x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (Ho et al. 2020, eq. 4)
for chosen t with one fixed noise sample, in pixel space or in a VAE's latent space (decoded for
display). Build runs a sampler and records, at every step, the current noisy latent x_t and the
model's prediction of x_0 (k-diffusion's ``denoised``), both decoded by the VAE.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sdstudio.errors import SDStudioError
from sdstudio.pipelines.components import signed_to_pil as tensor_to_pil

DEFAULT_TS = (0, 50, 100, 200, 300, 500, 700, 999)


def parse_timesteps(text: str, num_train_timesteps: int = 1000) -> list[int]:
    """Return the timesteps in a comma list like ``"0,100,500,999"``; each must be in [0, T)."""
    try:
        ts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise SDStudioError(f"timesteps must be comma-separated integers, got {text!r}", field="t") from exc
    bad = [t for t in ts if not 0 <= t < num_train_timesteps]
    if not ts or bad:
        raise SDStudioError(f"timesteps must be in [0, {num_train_timesteps - 1}], got {text!r}", field="t")
    return ts


def image_to_tensor(image, size: int | None = None) -> torch.Tensor:
    """Return a PIL image as ``(1, 3, H, W)`` in [-1, 1] (RGB; transparency on white; optional square resize)."""
    import numpy as np
    from PIL import Image

    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if size:
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    arr = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float()
    return (arr / 127.5 - 1)[None]


@torch.no_grad()
def demolish(
    x0: torch.Tensor,
    timesteps: Sequence[int],
    scheduler_config: dict,
    seed: int = 0,
    vae=None,
) -> torch.Tensor:
    """Return x_t for each t ``(len(ts), 3, H, W)`` in [-1, 1] from ``x0`` ``(1, 3, H, W)``.

    With ``vae`` the noise is added to the scaled latent (as latent diffusion does) and each x_t
    is decoded for display; otherwise in pixel space. One noise draw (``seed``) serves every t, so
    the strip shows the same path at increasing noise levels.
    """
    from sdstudio.training.diffusion import alphas_cumprod, q_sample

    abar = alphas_cumprod(scheduler_config)
    t = torch.tensor(list(timesteps), dtype=torch.long)
    if vae is None:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        return q_sample(x0.expand(len(t), -1, -1, -1), noise.expand(len(t), -1, -1, -1), t, abar).clamp(-1, 1)
    dtype = next(vae.parameters()).dtype
    scale = vae.config.scaling_factor
    z0 = vae.encode(x0.to(dtype)).latent_dist.mean.float() * scale  # (1, 4, h, w)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    zt = q_sample(z0.expand(len(t), -1, -1, -1), noise.expand(len(t), -1, -1, -1), t, abar)
    return vae.decode((zt / scale).to(dtype)).sample.float().clamp(-1, 1)


def labelled_strip(images: list, labels: list[str], scale: int = 1):
    """Return one PIL image: ``images`` side by side, each with its label underneath."""
    from PIL import Image, ImageDraw

    w, h = images[0].size
    w, h = w * scale, h * scale
    pad = 14
    strip = Image.new("RGB", (w * len(images), h + pad), "white")
    draw = ImageDraw.Draw(strip)
    for i, (im, label) in enumerate(zip(images, labels)):
        strip.paste(im.resize((w, h), Image.Resampling.NEAREST), (i * w, 0))
        draw.text((i * w + 2, h + 1), label, fill="black")
    return strip


def save_frames(images: list, labels: list[str], out: Path, scale: int = 1, frame_ms: int = 400) -> Path:
    """Write ``out`` as a strip (.png/.jpg/.webp) or an animated GIF (.gif); return the path."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".png", ".gif", ".jpg", ".jpeg", ".webp"):
        raise SDStudioError(f"output must end in .png, .gif, .jpg or .webp, not {out.name!r}", field="out")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".gif":
        frames = [labelled_strip([im], [lab], scale) for im, lab in zip(images, labels)]
        frames[0].save(out, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    else:
        labelled_strip(images, labels, scale).save(out)
    return out


@dataclass
class Trajectory:
    """The reverse process of one image: per step the noisy sample and the predicted x_0 (RGB in [-1, 1])."""

    sigmas: list[float]
    x_t: torch.Tensor  # (steps, 3, H, W) decoded current sample, rescaled to DDPM x_t
    x0_pred: torch.Tensor  # (steps, 3, H, W) decoded prediction of x_0
    final: torch.Tensor  # (1, 3, H, W)


@torch.no_grad()
def build(model, request) -> Trajectory:
    """Run ``request`` (first image only) through sdstudio's sampling loop and record every step.

    Uses the shared loop's step hook (k-diffusion callback state ``x``, ``sigma``, ``denoised``);
    x is shown as the DDPM sample x_t = x / sqrt(1 + sigma^2), decoded by the model's VAE.
    """
    from sdstudio.pipelines.components import decode_latents
    from sdstudio.pipelines.loop import sample_batch
    from sdstudio.pipelines.plan import SamplingPlan, encode_for_batch, latent_shape

    request = request.validate().with_resolved_seeds()
    plan = SamplingPlan.build(model, request.sampler_name, request.scheduler, request.steps)
    cond = encode_for_batch(model, request, 1, request.width, request.height)
    xs, x0s, sig = [], [], []

    def on_step(state: dict) -> None:
        s = float(state["sigma"].flatten()[0]) if torch.is_tensor(state["sigma"]) else float(state["sigma"])
        sig.append(s)
        xs.append(state["x"][:1].float() / (1 + s**2) ** 0.5)
        x0s.append(state["denoised"][:1].float())

    final = sample_batch(
        model,
        plan,
        cond.cond_at,
        cond.uncond_at,
        cfg_scale=request.cfg_scale,
        seeds=request.image_seeds()[:1],
        latent_shape=latent_shape(model, request.width, request.height),
        eta=request.eta,
        on_step=on_step,
    )

    def decode(z: list[torch.Tensor]) -> torch.Tensor:
        return decode_latents(model, torch.cat(z)).float() * 2 - 1  # [0, 1] -> [-1, 1]

    return Trajectory(sig, decode(xs), decode(x0s), decode([final]))


def trajectory_picture(traj: Trajectory, scale: int = 1):
    """One PIL image: x_t at each step (top row, labelled with sigma) over the predicted x_0 (bottom)."""
    from PIL import Image

    labels = [f"s={s:.2g}" for s in traj.sigmas]
    top = labelled_strip(tensor_to_pil(traj.x_t), labels, scale)
    bottom = labelled_strip(tensor_to_pil(traj.x0_pred), ["x0 pred"] * len(traj.sigmas), scale)
    out = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
    out.paste(top, (0, 0))
    out.paste(bottom, (0, top.height))
    return out
