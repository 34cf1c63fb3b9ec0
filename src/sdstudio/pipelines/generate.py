"""The one entry that makes images: ``generate(model, request)`` for every mode.

It checks the request once (limits, seeds, strength, images), then runs the mode's planner over
the shared sampling loop: txt2img (+ hires fix), img2img / inpainting, or outpainting (an
inpainting request planned by :func:`sdstudio.pipelines.outpaint.plan_outpaint`). ``txt2img``,
``img2img`` and ``outpaint`` are the same call with the inputs as arguments, for Python users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sdstudio.config import GenerationRequest, Limits
from sdstudio.networks import NetworkLibrary, activate_networks
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines.img2img import DEFAULT_STRENGTH, run_img2img
from sdstudio.pipelines.outpaint import outpaint_size, plan_outpaint
from sdstudio.pipelines.plan import GeneratedImage
from sdstudio.pipelines.tiling import seamless_tiling
from sdstudio.pipelines.txt2img import run_txt2img
from sdstudio.sampling.control import CancelToken, ProgressCallback

OnImage = Callable[[GeneratedImage], None]


def prepare(request: GenerationRequest, limits: Limits | None = None, *, max_image_pixels: int | None = None):
    """The request as the planners take it: images decoded, sizes and strength filled in, validated
    against ``limits``, seeds resolved (once: -1 becomes a random seed here)."""
    limits = limits or Limits()
    if request.init_images:
        pixels = max_image_pixels or limits.max_image_pixels
        images = tuple(ops.load_image(x, field="init_images", max_pixels=pixels) for x in request.init_images)
        mask = None if request.mask is None else ops.load_image(request.mask, field="mask", max_pixels=pixels)
        request = request.replace(init_images=images, mask=mask)
        if request.mode == "outpaint":
            width, height = outpaint_size(images[0].width, images[0].height, request.outpaint)
            request = request.replace(width=width, height=height)
        elif request.denoising_strength is None:
            request = request.replace(denoising_strength=DEFAULT_STRENGTH)
        if request.denoising_strength is not None:
            request = request.replace(denoising_strength=ops.check_strength(request.denoising_strength))
    return request.validate(limits).with_resolved_seeds()


def generate(
    model,
    request: GenerationRequest,
    *,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_image: OnImage | None = None,
    limits: Limits | None = None,
    prepared: bool = False,
    networks: NetworkLibrary | None = None,
) -> list[GeneratedImage]:
    """Run one request in its mode; image i of the job uses seed+i (A1111 batch-major order).

    ``prepared=True`` skips :func:`prepare` for a request that already went through it.
    ``networks`` is the LoRA/embedding library that ``<lora:...>`` tags and embedding names use;
    the weights are patched for this call only and restored exactly afterwards.
    """
    if not prepared:
        request = prepare(request, limits)
    with seamless_tiling(model, request.tiling), activate_networks(model, networks, request) as request:
        if request.mode == "txt2img":
            return run_txt2img(model, request, progress, cancel, on_image)
        if request.mode == "outpaint":
            work, region = plan_outpaint(request)
            return run_img2img(model, work, progress, cancel, on_image, region=region)
        return run_img2img(model, request, progress, cancel, on_image)


def txt2img(model, request: GenerationRequest, **kwargs) -> list[GeneratedImage]:
    """Text-to-image (and hires fix): ``generate`` of a request without init images."""
    return generate(model, request.replace(init_images=(), mask=None, outpaint=None), **kwargs)


def img2img(
    model,
    request: GenerationRequest,
    init_images: Sequence[ops.ImageInput],
    mask: ops.ImageInput | None = None,
    **kwargs,
) -> list[GeneratedImage]:
    """Image-to-image, or inpainting with ``mask`` (white = repaint)."""
    return generate(model, request.replace(init_images=tuple(init_images), mask=mask), **kwargs)


def outpaint(
    model,
    request: GenerationRequest,
    image: ops.ImageInput,
    *,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    **kwargs,
) -> list[GeneratedImage]:
    """Images of size ``(w + left + right, h + up + down)`` with the new area generated."""
    request = request.replace(init_images=(image,), mask=None, outpaint=(left, right, up, down))
    return generate(model, request, **kwargs)
