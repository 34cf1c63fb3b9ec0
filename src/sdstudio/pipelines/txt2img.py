"""Text-to-image: prompt -> images, batch by batch, through the shared sampling loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.config import GenerationRequest, Limits
from sdstudio.errors import SDStudioError
from sdstudio.infotext import create_infotext
from sdstudio.pipelines.components import decode_latents, to_pil
from sdstudio.pipelines.loop import JobProgress, job_batches, noise_kwargs, sample_batch
from sdstudio.pipelines.tiling import seamless_tiling
from sdstudio.prompts.encode import Conditioning, encode_prompts
from sdstudio.sampling.control import CancelToken, ProgressCallback
from sdstudio.sampling.registry import get_sampler, sigmas_for
from sdstudio.sampling.schedules import DiscreteSchedule


@dataclass
class GeneratedImage:
    """One finished image with everything needed to save and reproduce it."""

    image: Any  # PIL.Image.Image (RGB)
    seed: int
    subseed: int
    infotext: str
    index: int  # position in the job (batch-major)
    request: GenerationRequest


@dataclass
class PromptConditioning:
    """Encoded prompt and negative prompt for a batch; per-step lookup for future prompt editing."""

    cond: Conditioning
    uncond: Conditioning

    def cond_at(self, step: int) -> Conditioning:
        return self.cond

    def uncond_at(self, step: int) -> Conditioning:
        return self.uncond


def encode_for_batch(
    model,
    request: GenerationRequest,
    batch_size: int,
    width: int,
    height: int,
    prompt: str | None = None,
    negative: str | None = None,
) -> PromptConditioning:
    """Encode prompt and negative prompt (same chunk count) and repeat them for the batch."""
    from sdstudio.prompts.encode import count_chunks

    prompt = request.prompt if prompt is None else prompt
    negative = request.negative_prompt if negative is None else negative
    tok = model.tokenizers[0]
    chunks = max(count_chunks(tok, prompt), count_chunks(tok, negative))
    cond = encode_prompts(model, [prompt], request.clip_skip, chunks)
    uncond = encode_prompts(model, [negative], request.clip_skip, chunks)
    if model.is_sdxl:  # SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        cond.extra["time_ids"] = ids
        uncond.extra["time_ids"] = ids.clone()
    return PromptConditioning(cond.repeat(batch_size), uncond.repeat(batch_size))


def latent_shape(model, width: int, height: int) -> tuple[int, int, int]:
    f = model.vae_scale_factor
    if width % f or height % f:
        raise SDStudioError(f"width and height must be multiples of {f} for this model, got {width}x{height}")
    return (model.latent_channels, height // f, width // f)


def txt2img(
    model,
    request: GenerationRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
    limits: Limits | None = None,
) -> list[GeneratedImage]:
    """Generate ``batch_size * n_iter`` images; image i uses seed+i (A1111 batch-major order).

    ``limits`` bounds the request (default ``Limits()``; a server passes its configured limits).
    """
    request = request.validate(limits or Limits()).with_resolved_seeds()
    with seamless_tiling(model, request.tiling):
        return _run(model, request, progress, cancel, on_image)


def _run(model, request: GenerationRequest, progress, cancel, on_image) -> list[GeneratedImage]:
    spec = get_sampler(request.sampler_name)
    request = request.replace(sampler_name=spec.name)  # canonical A1111 name in the infotext (k_lms -> LMS)
    schedule = DiscreteSchedule.from_config(model.scheduler_config)
    sigmas = sigmas_for(spec, request.scheduler, request.steps, schedule)
    hires_steps = _hires_steps(request)
    job = JobProgress((len(sigmas) - 1 + hires_steps) * request.n_iter, request.n_iter, progress, cancel)
    shape = latent_shape(model, request.width, request.height)
    conditioning = encode_for_batch(model, request, request.batch_size, request.width, request.height)
    if model.is_inpainting:  # A1111: a 9-channel model in txt2img sees a full mask over a grey image
        from sdstudio.pipelines.inpaint import txt2img_concat

        concat = txt2img_concat(model, request.batch_size, request.height, request.width)
        conditioning.cond.extra["concat"] = concat
        conditioning.uncond.extra["concat"] = concat
    results: list[GeneratedImage] = []
    for it, images_slice in job_batches(request, cancel):
        noise = noise_kwargs(request, images_slice, seed_resize_from(model, request))
        latents = sample_batch(
            model, spec, sigmas, conditioning.cond_at, conditioning.uncond_at, cfg_scale=request.cfg_scale,
            latent_shape=shape, batch_index=it, progress=job, **noise,
        )  # fmt: skip
        extra: dict = {}
        if request.hires is not None and not (cancel is not None and cancel.stop_batch):
            from sdstudio.pipelines.hires import hires_pass  # the image-to-image family's module

            latents, images, extra = hires_pass(
                model, request, latents, noise["seeds"], noise["subseeds"], job
            )
        else:
            images = to_pil(decode_latents(model, latents))
        for k, image in enumerate(images):
            emit(
                results, finished_image(model, request, spec, image, images_slice.start + k, extra), on_image
            )
    return results


def finished_image(model, request: GenerationRequest, spec, image, index: int, extra: dict) -> GeneratedImage:
    """Wrap image ``index`` of the job with its seeds and A1111 infotext."""
    seed, subseed = request.seed + index, request.subseed + index
    text = create_infotext(
        request,
        seed=seed,
        subseed=subseed,
        model=model,
        extra=extra,
        schedule_type=schedule_label(spec, request),
    )
    return GeneratedImage(image, seed, subseed, text, index, request)


def emit(results: list, item: GeneratedImage, on_image) -> None:
    results.append(item)
    if on_image is not None:
        on_image(item)


def schedule_label(spec, request: GenerationRequest) -> str | None:
    """A1111 writes "Schedule type" when the user picked one; "Automatic" stays implicit."""
    return None if request.scheduler in ("", "Automatic", None) else spec.resolve_schedule(request.scheduler)


def seed_resize_from(model, request: GenerationRequest) -> tuple[int, int]:
    f = model.vae_scale_factor
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        return (request.seed_resize_from_h // f, request.seed_resize_from_w // f)
    return (0, 0)


_schedule_label, _seed_resize = schedule_label, seed_resize_from  # old private names


def _hires_steps(request: GenerationRequest) -> int:
    if request.hires is None:
        return 0
    return request.hires.second_pass_steps or request.steps
