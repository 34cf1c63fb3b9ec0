"""Outpainting: extend the canvas by N pixels per side and inpaint the new area.

As A1111's "Poor man's outpainting" script: the canvas grows, the new area is pre-filled (here
the nearest edge colour plus seeded noise, :func:`image_ops.extend_canvas`), and the mask covers
the new area plus ``2 * mask_blur`` px of the original on each extended side so the seam is
repainted. The canvas is processed at the next multiple of 8 and pasted back at its exact size,
so the output is always ``input + extension``; original pixels outside the mask stay exact.
"""

from __future__ import annotations

from collections.abc import Callable

from sdstudio.config import GenerationRequest, Limits
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines.img2img import img2img
from sdstudio.pipelines.txt2img import GeneratedImage
from sdstudio.sampling.control import CancelToken, ProgressCallback

DEFAULT_STRENGTH = 0.8
NOISE_STD = 24.0  # std of the noise added to the edge colour, 0-255 scale


def outpaint(
    model,
    request: GenerationRequest,
    image: ops.ImageInput,
    *,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    on_image: Callable[[GeneratedImage], None] | None = None,
    limits: Limits | None = None,
) -> list[GeneratedImage]:
    """Return images of size ``(w + left + right, h + up + down)`` with the new area generated."""
    original = ops.load_image(image, field="init_images")
    source = ops.flatten(original)
    request = request.with_resolved_seeds()
    canvas, mask = ops.extend_canvas(
        source,
        left=left,
        right=right,
        up=up,
        down=down,
        overlap=2 * request.mask_blur,
        noise=NOISE_STD,
        seed=request.seed,
    )
    sides = f"left={left} right={right} up={up} down={down}"
    work = request.replace(
        width=_ceil8(canvas.width),
        height=_ceil8(canvas.height),
        inpaint_full_res=False,
        denoising_strength=DEFAULT_STRENGTH
        if request.denoising_strength is None
        else request.denoising_strength,
        extra={**request.extra, "Outpaint": sides, "Init image hash": ops.image_hash(original)},
    )
    region = (0, 0, canvas.width, canvas.height)
    return img2img(
        model,
        work,
        [canvas],
        mask,
        progress=progress,
        cancel=cancel,
        on_image=on_image,
        region=region,
        limits=limits,
    )


def _ceil8(value: int) -> int:
    return -(-value // 8) * 8
