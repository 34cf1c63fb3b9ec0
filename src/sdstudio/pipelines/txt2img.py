"""Text-to-image: prompt -> images, batch by batch, through the shared sampling loop (+ hires fix)."""

from __future__ import annotations

from collections.abc import Callable

from sdstudio.config import GenerationRequest
from sdstudio.pipelines.components import to_pil
from sdstudio.pipelines.hires import hires_pass, hires_steps
from sdstudio.pipelines.loop import JobProgress, job_batches, noise_kwargs, sample_batch
from sdstudio.pipelines.plan import (
    GeneratedImage,
    SamplingPlan,
    emit,
    encode_for_batch,
    finished_image,
    latent_shape,
    seed_resize_from,
    txt2img_concat,
)
from sdstudio.pipelines.speed import SpeedOptions
from sdstudio.sampling.control import CancelToken, ProgressCallback


def run_txt2img(
    model,
    request: GenerationRequest,
    progress: ProgressCallback | None,
    cancel: CancelToken | None,
    on_image: Callable[[GeneratedImage], None] | None,
) -> list[GeneratedImage]:
    """Generate ``batch_size * n_iter`` images of a validated request with resolved seeds.

    Image i uses seed+i (A1111 batch-major order); a 9-channel model sees a full mask over grey.
    """
    plan = SamplingPlan.build(model, request.sampler_name, request.scheduler, request.steps)
    request = request.replace(sampler_name=plan.spec.name)  # canonical A1111 name (k_lms -> LMS)
    job = JobProgress((plan.steps + hires_steps(request)) * request.n_iter, request.n_iter, progress, cancel)
    shape = latent_shape(model, request.width, request.height)
    conditioning = encode_for_batch(model, request, request.batch_size, request.width, request.height)
    cond_at, uncond_at = conditioning.with_concat(
        txt2img_concat(model, request.batch_size, request.height, request.width)
    )
    speed = SpeedOptions.from_request(request)
    results: list[GeneratedImage] = []
    for it, images_slice in job_batches(request, cancel):
        noise = noise_kwargs(request, images_slice, seed_resize_from(model, request))
        latents = sample_batch(
            model, plan, cond_at, uncond_at, cfg_scale=request.cfg_scale,
            latent_shape=shape, batch_index=it, progress=job, speed=speed, **noise,
        )  # fmt: skip
        extra: dict = {}
        if request.hires is not None and not (cancel is not None and cancel.stop_batch):
            latents, images, extra = hires_pass(
                model, request, latents, noise["seeds"], noise["subseeds"], job
            )
        else:
            pixels, extra = speed.decode(model, latents)
            images = to_pil(pixels)
        extra = {**extra, **job.interrupted_params()}
        for k, image in enumerate(images):
            item = finished_image(model, request, plan.spec, image, images_slice.start + k, extra)
            emit(results, item, on_image)
    return results
