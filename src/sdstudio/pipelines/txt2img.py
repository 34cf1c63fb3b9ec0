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
from sdstudio.sampling.guidance import Composite
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


Schedule = list[tuple[int, Conditioning]]  # [(end_at_step, cond), ...], A1111 prompt editing


@dataclass
class PromptConditioning:
    """Prompt and negative prompt of a batch as schedules over sampler steps.

    ``parts`` holds one ``(schedule, weight)`` per ``AND`` sub-prompt (usually one, weight 1);
    step ``s`` (0-based) uses the first schedule entry with ``s <= end_at_step`` (A1111).
    """

    parts: list[tuple[Schedule, float]]
    unconds: Schedule

    @property
    def cond(self) -> Conditioning:
        return self.parts[0][0][0][1]

    @property
    def uncond(self) -> Conditioning:
        return self.unconds[0][1]

    def cond_at(self, step: int) -> Conditioning | Composite:
        if len(self.parts) == 1 and self.parts[0][1] == 1.0:
            return _scheduled(self.parts[0][0], step)
        return Composite(tuple((_scheduled(schedule, step), w) for schedule, w in self.parts))

    def uncond_at(self, step: int) -> Conditioning:
        return _scheduled(self.unconds, step)


def _scheduled(schedule: Schedule, step: int) -> Conditioning:
    for end, cond in schedule:
        if step <= end:
            return cond
    return schedule[-1][1]


def encode_for_batch(
    model,
    request: GenerationRequest,
    batch_size: int,
    width: int,
    height: int,
    prompt: str | None = None,
    negative: str | None = None,
    steps: int | None = None,
) -> PromptConditioning:
    """Encode ``AND`` parts and their schedules (``[from:to:when]``, ``[a|b]``), repeated for the batch.

    Every distinct text is encoded once, all with the same number of 75-token chunks.
    """
    from sdstudio.prompts.encode import count_chunks
    from sdstudio.prompts.schedule import prompt_schedule, split_and

    steps = steps or request.steps
    parts = [
        (prompt_schedule(text, steps), w)
        for text, w in split_and(request.prompt if prompt is None else prompt)
    ]
    negative_sched = prompt_schedule(request.negative_prompt if negative is None else negative, steps)
    texts = {text for schedule, _ in parts for _, text in schedule} | {text for _, text in negative_sched}
    chunks = max(count_chunks(model.tokenizers[0], text) for text in texts)
    encoded = {}
    for text in texts:
        cond = encode_prompts(model, [text], request.clip_skip, chunks)
        if (
            model.is_sdxl
        ):  # SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
            cond.extra["time_ids"] = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        encoded[text] = cond.repeat(batch_size)
    return PromptConditioning(
        [([(end, encoded[text]) for end, text in schedule], w) for schedule, w in parts],
        [(end, encoded[text]) for end, text in negative_sched],
    )


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
    cond_at, uncond_at = conditioning.cond_at, conditioning.uncond_at
    if model.is_inpainting:  # A1111: a 9-channel model in txt2img sees a full mask over a grey image
        from sdstudio.pipelines.inpaint import concat_lookup, txt2img_concat

        concat = txt2img_concat(model, request.batch_size, request.height, request.width)
        cond_at, uncond_at = concat_lookup(cond_at, concat), concat_lookup(uncond_at, concat)
    results: list[GeneratedImage] = []
    for it, images_slice in job_batches(request, cancel):
        noise = noise_kwargs(request, images_slice, seed_resize_from(model, request))
        latents = sample_batch(
            model, spec, sigmas, cond_at, uncond_at, cfg_scale=request.cfg_scale,
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
