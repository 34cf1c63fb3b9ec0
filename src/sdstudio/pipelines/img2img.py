"""Image-to-image: encode the init image, noise it to the strength's sigma, run the shared loop.

Step rule (A1111 ``sd_samplers_common.setup_img2img_steps`` + ``sd_samplers_kdiffusion
.sample_img2img``): the schedule is built for ``steps`` sigmas and sampling starts at index
``steps - t_enc - 1`` with ``t_enc = int(min(strength, 0.999) * steps)``, so ``t_enc + 1`` steps
run; with ``fix_steps`` (A1111 option "img2img_fix_steps", and always for the hires pass) the
schedule is ``int(steps / min(strength, 0.999))`` long and exactly ``steps`` run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.config import GenerationRequest, Limits
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines import inpaint
from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil
from sdstudio.pipelines.loop import JobProgress, job_batches, noise_kwargs, sample_batch
from sdstudio.pipelines.tiling import seamless_tiling
from sdstudio.pipelines.txt2img import (
    GeneratedImage,
    emit,
    encode_for_batch,
    finished_image,
    seed_resize_from,
)
from sdstudio.sampling.control import CancelToken, ProgressCallback
from sdstudio.sampling.noise import ImageNoise
from sdstudio.sampling.registry import SamplerSpec, get_sampler, sigmas_for
from sdstudio.sampling.schedules import DiscreteSchedule


def img2img_schedule(steps: int, strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """Return ``(total, start)``: build sigmas for ``total`` steps and sample from index ``start``.

    The loop then runs ``total - start`` steps, starting from ``init + noise * sigmas[start]``.
    >>> img2img_schedule(20, 0.5)
    (20, 9)
    >>> img2img_schedule(20, 0.5, fix_steps=True)
    (40, 20)
    >>> img2img_schedule(20, 1.0)
    (20, 0)
    """
    capped = min(strength, 0.999)
    if fix_steps:
        total = int(steps / capped) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total = steps
        t_enc = int(capped * steps)
    return total, total - t_enc - 1


DEFAULT_STRENGTH = 0.75  # A1111 API default for denoising_strength


def img2img(
    model,
    request: GenerationRequest,
    init_images: Sequence[ops.ImageInput],
    mask: ops.ImageInput | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
    region: tuple[int, int, int, int] | None = None,
    limits: Limits | None = None,
) -> list[GeneratedImage]:
    """Generate ``batch_size * n_iter`` images from init images (and an optional inpainting mask).

    One init image is repeated for the whole batch; otherwise pass exactly ``batch_size``
    (A1111). With ``mask`` this is inpainting (see :mod:`sdstudio.pipelines.inpaint`); ``region``
    forces the crop box that "only masked" would otherwise find (used by outpainting).
    """
    request, strength = _checked(request, limits)
    with seamless_tiling(model, request.tiling):
        return _run(model, request, strength, init_images, mask, region, progress, cancel, on_image)


def _run(
    model, request, strength, init_images, mask, region, progress, cancel, on_image
) -> list[GeneratedImage]:
    init = _prepare_init(model, request, init_images, mask, region)
    plan = _Plan.build(model, request, strength)
    job = JobProgress(plan.run * request.n_iter, request.n_iter, progress, cancel)
    conditioning = encode_for_batch(model, request, request.batch_size, request.width, request.height)
    cond_at, uncond_at = conditioning.cond_at, conditioning.uncond_at
    if init.concat is not None:
        cond_at, uncond_at = (
            inpaint.concat_lookup(cond_at, init.concat),
            inpaint.concat_lookup(uncond_at, init.concat),
        )
    results: list[GeneratedImage] = []
    for it, images_slice in job_batches(request, cancel):
        noise = noise_kwargs(request, images_slice, seed_resize_from(model, request))
        start_latents = init.filled(request, noise["seeds"])
        latents = start_latents
        if plan.run:  # strength 0 keeps the re-encoded input
            latents = sample_batch(
                model, plan.spec, plan.sigmas, cond_at, uncond_at, cfg_scale=request.cfg_scale,
                latent_shape=tuple(init.latents.shape[1:]), init_latent=start_latents,
                post_denoise=init.post_denoise(start_latents), batch_index=it, progress=job, **noise,
            )  # fmt: skip
        images = to_pil(decode_latents(model, init.final_blend(latents, start_latents)))
        for k, image in enumerate(images):
            pasted = inpaint.paste_back(image, init.prepared, k)
            item = finished_image(model, request, plan.spec, pasted, images_slice.start + k, init.infotext)
            emit(results, item, on_image)
    return results


@dataclass
class _Plan:
    """Sampler, the tail of the schedule img2img runs, and how many steps that is."""

    spec: SamplerSpec
    sigmas: torch.Tensor  # (run + 1,)
    run: int

    @classmethod
    def build(cls, model, request: GenerationRequest, strength: float) -> _Plan:
        spec = get_sampler(request.sampler_name)
        total, start = img2img_schedule(request.steps, strength)
        sigmas = sigmas_for(
            spec, request.scheduler, total, DiscreteSchedule.from_config(model.scheduler_config)
        )
        sigmas = sigmas[start:]
        return cls(spec, sigmas, len(sigmas) - 1 if strength > 0 else 0)


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


def _checked(request: GenerationRequest, limits: Limits) -> tuple[GenerationRequest, float]:
    """Validate the request (strength defaults to 0.75) and resolve its seeds."""
    strength = DEFAULT_STRENGTH if request.denoising_strength is None else request.denoising_strength
    strength = ops.check_strength(strength)
    request = request.replace(denoising_strength=strength).validate(limits or Limits()).with_resolved_seeds()
    return request, strength


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
    return inpaint.image_conditioning(
        lambda x: encode_images(model, (x + 1) / 2), pixels * 2 - 1, mask, tuple(latents.shape[-2:])
    )
