"""Image-to-image and inpainting: encode the init images, noise them to the strength's sigma, run
the shared loop (the step rule is :func:`sdstudio.pipelines.plan.img2img_schedule`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines import inpaint
from sdstudio.pipelines.components import encode_images, from_pil, to_pil
from sdstudio.pipelines.loop import JobProgress, job_batches, noise_kwargs, sample_batch
from sdstudio.pipelines.plan import (
    GeneratedImage,
    SamplingPlan,
    emit,
    encode_for_batch,
    finished_image,
    image_conditioning,
    img2img_schedule,
    seed_resize_from,
)
from sdstudio.pipelines.speed import SpeedOptions
from sdstudio.sampling.control import CancelToken, ProgressCallback
from sdstudio.sampling.noise import ImageNoise

DEFAULT_STRENGTH = 0.75  # A1111 API default for denoising_strength


def run_img2img(
    model,
    request: GenerationRequest,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    on_image: Callable[[GeneratedImage], None] | None,
    region: tuple[int, int, int, int] | None = None,
) -> list[GeneratedImage]:
    """Generate ``batch_size * n_iter`` images from ``request.init_images`` (and ``request.mask``).

    The request is validated, with resolved seeds and a denoising strength. One init image is
    repeated for the whole batch; otherwise there are exactly ``batch_size`` (A1111). With a mask
    this is inpainting (:mod:`sdstudio.pipelines.inpaint`); ``region`` forces the crop box that
    "only masked" would otherwise find (used by outpainting).
    """
    strength = request.denoising_strength
    init = _prepare_init(model, request, request.init_images, request.mask, region)
    total, start = img2img_schedule(request.steps, strength)
    plan = SamplingPlan.build(model, request.sampler_name, request.scheduler, total, start)
    runs = plan.steps if strength > 0 else 0  # strength 0 keeps the re-encoded input
    job = JobProgress(runs * request.n_iter, request.n_iter, progress, cancel)
    conditioning = encode_for_batch(model, request, request.batch_size, request.width, request.height)
    cond_at, uncond_at = conditioning.with_concat(init.concat)
    speed = SpeedOptions.from_request(request)
    results: list[GeneratedImage] = []
    for it, images_slice in job_batches(request, cancel):
        noise = noise_kwargs(request, images_slice, seed_resize_from(model, request))
        start_latents = init.filled(request, noise["seeds"])
        latents = start_latents
        if runs:
            latents = sample_batch(
                model, plan, cond_at, uncond_at, cfg_scale=request.cfg_scale,
                latent_shape=tuple(init.latents.shape[1:]), init_latent=start_latents,
                noise_multiplier=request.initial_noise_multiplier, post_denoise=init.post_denoise(start_latents), batch_index=it, progress=job,
                speed=speed, **noise,
            )  # fmt: skip
        pixels, decoder = speed.decode(model, init.final_blend(latents, start_latents))
        images = to_pil(pixels)
        extra = {**init.infotext, **decoder, **job.interrupted_params()}
        for k, image in enumerate(images):
            pasted = inpaint.paste_back(image, init.prepared, k)
            item = finished_image(model, request, plan.spec, pasted, images_slice.start + k, extra)
            emit(results, item, on_image)
    return results


@dataclass
class _Init:
    """Everything derived once per job from the init images and the mask."""

    prepared: inpaint.PreparedInputs
    latents: torch.Tensor  # (B, C, h, w) VAE latents of the prepared images
    nmask: torch.Tensor | None  # (1, 1, h, w) repaint mask at latent size
    concat: torch.Tensor | None  # (B, 5, h, w) 9-channel model input
    infotext: dict[str, Any]

    def filled(self, request: GenerationRequest, seeds: Sequence[int]) -> torch.Tensor:
        """Init latents of one batch after A1111's latent masked-content modes (2 noise, 3 nothing)."""
        if self.nmask is None or request.inpainting_fill not in (2, 3):
            return self.latents
        noise = ImageNoise(tuple(self.latents.shape[1:]), seeds).initial().to(self.latents)
        return inpaint.fill_latents(self.latents, self.nmask, request.inpainting_fill, noise)

    def post_denoise(self, start_latents: torch.Tensor):
        return None if self.nmask is None else inpaint.denoised_blend(start_latents, self.nmask)

    def final_blend(self, latents: torch.Tensor, start_latents: torch.Tensor) -> torch.Tensor:
        """A1111 ``sample``: ``samples * nmask + init * (1 - nmask)`` once sampling is done."""
        if self.nmask is None:
            return latents
        return latents * self.nmask + start_latents.to(latents) * (1 - self.nmask.to(latents))


def _prepare_init(model, request, init_images, mask, region) -> _Init:
    """Load, check, resize/crop/fill and VAE-encode the init images; build the mask tensors."""
    images = [ops.load_image(x, field="init_images") for x in init_images]
    _check_count(images, request.batch_size)
    mask_image = None if mask is None else ops.load_image(mask, field="mask")
    prepared = inpaint.prepare_inputs(request, images, mask_image, region=region)
    pixels = from_pil(prepared.images)  # (1 or B, 3, H, W) in [0, 1]
    if pixels.shape[0] == 1 and request.batch_size > 1:
        pixels = pixels.repeat(request.batch_size, 1, 1, 1)
    latents = encode_images(model, pixels)  # (B, C, h, w)
    nmask = None if prepared.mask is None else inpaint.latent_masks(prepared, latents)
    concat = _concat_input(model, prepared, pixels, latents) if model.is_inpainting else None
    infotext = {
        **prepared.extra,
        "Init image hash": request.extra.get("Init image hash") or ops.image_hash(images[0]),
    }
    return _Init(prepared, latents, nmask, concat, infotext)


def _check_count(images: list, batch_size: int) -> None:
    if not images:
        raise SDStudioError("img2img needs at least one init image", field="init_images")
    if len(images) not in (1, batch_size):
        raise SDStudioError(
            f"got {len(images)} init images; pass one (used for the whole batch) or batch_size={batch_size}",
            field="init_images",
        )


def _concat_input(model, prepared: inpaint.PreparedInputs, pixels: torch.Tensor, latents: torch.Tensor):
    """[mask, masked-image latent], (B, 5, h, w), for a 9-channel inpainting UNet."""
    mask = None if prepared.mask is None else inpaint.pixel_mask_tensor(prepared.mask)
    return image_conditioning(
        lambda x: encode_images(model, (x + 1) / 2), pixels * 2 - 1, mask, tuple(latents.shape[-2:])
    )
