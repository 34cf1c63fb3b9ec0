"""Hires fix for text-to-image (A1111 ``StableDiffusionProcessingTxt2Img.sample_hr_pass``).

The first pass runs at (width, height); its latents are upscaled either in latent space
(``torch.nn.functional.interpolate``, A1111 ``shared.latent_upscale_modes``) or as decoded
images (PIL Lanczos / Nearest, or a model upscaler file such as ESRGAN run tile by tile by
:mod:`sdstudio.upscale`; re-encoded), then a second img2img pass runs at the target size
with ``hires.denoising_strength`` and exactly ``second_pass_steps or steps`` steps (A1111 passes
the step count explicitly, which selects the "fix steps" schedule of ``setup_img2img_steps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil
from sdstudio.pipelines.image_ops import check_strength
from sdstudio.pipelines.loop import JobProgress, sample_batch
from sdstudio.pipelines.plan import (
    SamplingPlan,
    encode_for_batch,
    img2img_schedule,
    seed_resize_from,
    txt2img_concat,
)
from sdstudio.pipelines.speed import SpeedOptions
from sdstudio.upscale.image import upscale_to
from sdstudio.upscale.load import load_upscaler

# A1111 modules/shared_items.py latent_upscale_modes: name -> (interpolate mode, antialias)
LATENT_UPSCALERS: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}
# A1111 built-in image upscalers (modules/upscaler.py UpscalerNone/UpscalerLanczos/UpscalerNearest)
IMAGE_UPSCALERS: dict[str, Image.Resampling] = {
    "None": Image.Resampling.LANCZOS,
    "Lanczos": Image.Resampling.LANCZOS,
    "Nearest": Image.Resampling.NEAREST,
}
UPSCALERS = (*LATENT_UPSCALERS, *IMAGE_UPSCALERS)


def check_upscaler(name: str) -> str:
    """Return the canonical upscaler name (case-insensitive) or raise SDStudioError listing the valid ones."""
    for known in UPSCALERS:
        if known.lower() == (name or "").strip().lower():
            return known
    raise SDStudioError(
        f"unknown hires upscaler {name!r}; choose one of: {', '.join(UPSCALERS)}", field="hr_upscaler"
    )


def is_latent_upscaler(name: str) -> bool:
    """True when the upscaler works on latents (no decode/encode round trip)."""
    return check_upscaler(name) in LATENT_UPSCALERS


def upscale_latents(latents: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    """Resize (B, C, h, w) latents to ``size`` = (h2, w2) with A1111's latent upscale mode ``name``."""
    mode, antialias = LATENT_UPSCALERS[check_upscaler(name)]
    kwargs: dict[str, Any] = {"mode": mode}
    if mode in ("bilinear", "bicubic"):
        kwargs.update(antialias=antialias, align_corners=False)
    return torch.nn.functional.interpolate(latents.float(), size=size, **kwargs).to(latents.dtype)


def upscale_image(image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    """Resize an RGB image to ``size`` = (width, height) with a built-in image upscaler."""
    return image.resize(size, resample=IMAGE_UPSCALERS[check_upscaler(name)])


def hires_infotext(request: Any) -> dict[str, Any]:
    """Infotext keys for a hires job, in A1111's order (``Denoising strength``, ``Hires upscale`` or
    ``Hires resize``, ``Hires steps``, ``Hires upscaler``, then sampler/prompt keys when they differ)."""
    hr = request.hires
    extra: dict[str, Any] = {"Denoising strength": hr.denoising_strength}
    if hr.resize_x or hr.resize_y:
        extra["Hires resize"] = f"{hr.resize_x}x{hr.resize_y}"
    else:
        extra["Hires upscale"] = hr.scale
    if hr.second_pass_steps:
        extra["Hires steps"] = hr.second_pass_steps
    extra["Hires upscaler"] = hr.upscaler if hr.upscaler_path else check_upscaler(hr.upscaler)
    if hr.sampler and hr.sampler != request.sampler_name:
        extra["Hires sampler"] = hr.sampler
    if hr.scheduler and hr.scheduler != request.scheduler:
        extra["Hires schedule type"] = hr.scheduler
    if hr.prompt and hr.prompt != request.prompt:
        extra["Hires prompt"] = hr.prompt
    if hr.negative_prompt and hr.negative_prompt != request.negative_prompt:
        extra["Hires negative prompt"] = hr.negative_prompt
    return extra


def hires_steps(request: Any) -> int:
    """Steps the second pass adds to the job (0 without hires fix)."""
    if request.hires is None:
        return 0
    return request.hires.second_pass_steps or request.steps


def second_pass_request(request: Any) -> Any:
    """Return the request the second pass samples with: target size, its own steps/sampler/prompts."""
    hr = request.hires
    width, height = hr.target_size(request.width, request.height)
    return request.replace(
        width=width,
        height=height,
        steps=hr.second_pass_steps or request.steps,
        sampler_name=hr.sampler or request.sampler_name,
        scheduler=hr.scheduler or request.scheduler,
        prompt=hr.prompt or request.prompt,
        negative_prompt=hr.negative_prompt or request.negative_prompt,
        denoising_strength=hr.denoising_strength,
        hires=None,
    )


def hires_pass(
    model: Any,
    request: Any,
    latents: torch.Tensor,
    seeds: Sequence[int],
    subseeds: Sequence[int],
    job: JobProgress | None = None,
    *,
    batch_index: int = 0,
) -> tuple[torch.Tensor, list[Image.Image], dict[str, Any]]:
    """Upscale first-pass latents (B, C, h, w) and run the second pass through the shared loop.

    Returns (latents at the target size, decoded PIL images, infotext extras). Noise is drawn
    afresh from the same seeds at the target size (A1111 builds a new ``ImageRNG``), and the
    second pass runs exactly ``second_pass_steps or steps`` steps from the fixed-steps schedule.
    """
    hr = second_pass_request(request)
    speed = SpeedOptions.from_request(hr)
    strength = check_strength(hr.denoising_strength, "hr_denoising_strength")
    upscaled = _upscale(model, request.hires, latents, hr.width, hr.height)
    if strength > 0:
        total, start = img2img_schedule(hr.steps, strength, fix_steps=True)
        plan = SamplingPlan.build(model, hr.sampler_name, hr.scheduler, total, start)
        conditioning = encode_for_batch(model, hr, latents.shape[0], hr.width, hr.height)
        cond_at, uncond_at = conditioning.with_concat(
            txt2img_concat(model, latents.shape[0], hr.height, hr.width)
        )
        upscaled = sample_batch(
            model,
            plan,
            cond_at,
            uncond_at,
            cfg_scale=hr.cfg_scale,
            seeds=seeds,
            latent_shape=tuple(upscaled.shape[1:]),
            subseeds=subseeds,
            subseed_strength=hr.subseed_strength,
            seed_resize_from=seed_resize_from(model, hr),
            init_latent=upscaled,
            eta=hr.eta,
            s_noise=hr.s_noise,
            batch_index=batch_index,
            progress=job,
            speed=speed,
        )
    pixels, decoder = speed.decode(model, upscaled)  # fast mode: the tiny VAE, if the model has one
    return upscaled, to_pil(pixels), {**hires_infotext(request), **decoder}


def _upscale(model: Any, hires: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Latents at (height, width) pixels: interpolated directly, or decoded, resized (a built-in or a
    model upscaler: model passes, then Lanczos to the exact size, as A1111) and re-encoded."""
    f = model.vae_scale_factor
    if not hires.upscaler_path and is_latent_upscaler(hires.upscaler):
        return upscale_latents(latents, hires.upscaler, (height // f, width // f))
    images = to_pil(decode_latents(model, latents))
    if hires.upscaler_path:
        upscaler = load_upscaler(hires.upscaler_path, device=str(getattr(model, "device", "cpu")))
        images = [upscale_to(upscaler, im, (width, height)) for im in images]
    else:
        images = [upscale_image(im, hires.upscaler, (width, height)) for im in images]
    return encode_images(model, from_pil(images))
