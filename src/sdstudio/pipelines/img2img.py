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

import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.infotext import create_infotext
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines import inpaint
from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil
from sdstudio.pipelines.loop import JobProgress, sample_batch
from sdstudio.pipelines.txt2img import GeneratedImage, encode_for_batch, latent_shape
from sdstudio.pipelines.txt2img import _schedule_label as schedule_label  # TODO(lead): make public
from sdstudio.pipelines.txt2img import _seed_resize as seed_resize_from  # TODO(lead): make public
from sdstudio.prompts.encode import Conditioning
from sdstudio.sampling.control import CancelToken, ProgressCallback
from sdstudio.sampling.noise import ImageNoise
from sdstudio.sampling.registry import get_sampler, sigmas_for
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
) -> list[GeneratedImage]:
    """Generate ``batch_size * n_iter`` images from init images (and an optional inpainting mask).

    One init image is repeated for the whole batch; otherwise pass exactly ``batch_size``
    (A1111). With ``mask`` this is inpainting (see :mod:`sdstudio.pipelines.inpaint`); ``region``
    forces the crop box that "only masked" would otherwise find (used by outpainting).
    """
    request, strength = _checked(request)
    images = [ops.load_image(x, field="init_images") for x in init_images]
    _check_count(images, request.batch_size)
    mask_image = None if mask is None else ops.load_image(mask, field="mask")
    prepared = inpaint.prepare_inputs(request, images, mask_image, region=region)
    extra = {
        **prepared.extra,
        "Init image hash": request.extra.get("Init image hash") or ops.image_hash(images[0]),
    }
    spec = get_sampler(request.sampler_name)
    schedule = DiscreteSchedule.from_config(model.scheduler_config)
    total, start = img2img_schedule(request.steps, strength)
    sigmas = sigmas_for(spec, request.scheduler, total, schedule)[start:]
    run = len(sigmas) - 1 if strength > 0 else 0
    job = JobProgress(run * request.n_iter, request.n_iter, progress, cancel)
    shape = latent_shape(model, request.width, request.height)
    conditioning = encode_for_batch(model, request, request.batch_size, request.width, request.height)
    init = _encode_batch(model, prepared, request.batch_size)  # (B, C, h, w) and its pixels
    seeds, subseeds = request.image_seeds(), request.image_subseeds()
    results: list[GeneratedImage] = []
    for it in range(request.n_iter):
        if cancel is not None and cancel.interrupted:
            break
        if cancel is not None:
            cancel.clear_skip()
        lo, hi = it * request.batch_size, (it + 1) * request.batch_size
        batch = _BatchInputs(model, request, prepared, init, seeds[lo:hi], shape)
        if run:
            latents = sample_batch(
                model,
                spec,
                sigmas,
                batch.cond_at(conditioning.cond_at),
                batch.cond_at(conditioning.uncond_at),
                cfg_scale=request.cfg_scale,
                seeds=seeds[lo:hi],
                latent_shape=shape,
                subseeds=subseeds[lo:hi],
                subseed_strength=request.subseed_strength,
                seed_resize_from=seed_resize_from(model, request),
                init_latent=batch.latents,
                post_denoise=batch.post_denoise,
                eta=request.eta,
                s_noise=request.s_noise,
                batch_index=it,
                progress=job,
            )
        else:  # strength 0: no sampling, the re-encoded input
            latents = batch.latents
        decoded = to_pil(decode_latents(model, batch.final_blend(latents)))
        for k, image in enumerate(decoded):
            index = lo + k
            image = inpaint.paste_back(image, prepared, k)
            text = create_infotext(
                request,
                seed=seeds[index],
                subseed=subseeds[index],
                model=model,
                extra=extra,
                schedule_type=schedule_label(spec, request),
            )
            item = GeneratedImage(image, seeds[index], subseeds[index], text, index, request)
            results.append(item)
            if on_image is not None:
                on_image(item)
    return results


def _checked(request: GenerationRequest) -> tuple[GenerationRequest, float]:
    """Validate the request (strength defaults to 0.75) and resolve its seeds."""
    strength = DEFAULT_STRENGTH if request.denoising_strength is None else request.denoising_strength
    strength = ops.check_strength(strength)
    request = request.replace(denoising_strength=strength).validate().with_resolved_seeds()
    return request, strength


def _check_count(images: list, batch_size: int) -> None:
    if not images:
        raise SDStudioError("img2img needs at least one init image", field="init_images")
    if len(images) not in (1, batch_size):
        raise SDStudioError(
            f"got {len(images)} init images; pass one (used for the whole batch) or batch_size={batch_size}",
            field="init_images",
        )


@dataclass
class _EncodedInit:
    """The init images at processing size as pixels (B, 3, H, W) in [0, 1] and latents (B, C, h, w)."""

    pixels: torch.Tensor
    latents: torch.Tensor


def _encode_batch(model, prepared: inpaint.PreparedInputs, batch_size: int) -> _EncodedInit:
    pixels = from_pil(prepared.images)
    if pixels.shape[0] == 1 and batch_size > 1:
        pixels = pixels.repeat(batch_size, 1, 1, 1)
    return _EncodedInit(pixels, encode_images(model, pixels))


class _BatchInputs:
    """Per-batch inpainting state: filled init latents, latent mask, blend and 9-channel input."""

    def __init__(self, model, request, prepared, init: _EncodedInit, seeds, shape) -> None:
        self.latents = init.latents
        self.nmask = None if prepared.mask is None else inpaint.latent_masks(prepared, init.latents)
        if self.nmask is not None and request.inpainting_fill in (2, 3):
            noise = ImageNoise(shape, seeds).initial() if request.inpainting_fill == 2 else None
            self.latents = inpaint.fill_latents(init.latents, self.nmask, request.inpainting_fill, noise)
        self.concat = _concat_input(model, prepared, init) if model.is_inpainting else None

    @property
    def post_denoise(self):
        return None if self.nmask is None else inpaint.denoised_blend(self.latents, self.nmask)

    def cond_at(self, lookup: Callable[[int], Conditioning]) -> Callable[[int], Conditioning]:
        """Wrap a per-step conditioning lookup to carry the 9-channel input (``extra["concat"]``)."""
        if self.concat is None:
            return lookup
        return inpaint.concat_lookup(lookup, self.concat)

    def final_blend(self, latents: torch.Tensor) -> torch.Tensor:
        """A1111 ``sample``: ``samples * nmask + init * (1 - nmask)`` once sampling is done."""
        if self.nmask is None:
            return latents
        return latents * self.nmask + self.latents * (1 - self.nmask)


def _concat_input(model, prepared: inpaint.PreparedInputs, init: _EncodedInit) -> torch.Tensor:
    """[mask, masked-image latent], (B, 5, h, w), for a 9-channel inpainting UNet."""
    mask = None if prepared.mask is None else inpaint.pixel_mask_tensor(prepared.mask)
    return inpaint.image_conditioning(
        lambda x: encode_images(model, (x + 1) / 2), init.pixels * 2 - 1, mask, tuple(init.latents.shape[-2:])
    )
