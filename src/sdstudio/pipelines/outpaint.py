"""Outpainting: extend the canvas by N pixels per side and inpaint the new area.

As A1111's "Poor man's outpainting" script: the canvas grows, the new area is pre-filled (here
the nearest edge colour plus seeded noise, :func:`image_ops.extend_canvas`), and the mask covers
the new area plus ``2 * mask_blur`` px of the original on each extended side so the seam is
repainted. The canvas is processed at the next multiple of 8 and pasted back at its exact size,
so the output is always ``input + extension``; original pixels outside the mask stay exact.
"""

from __future__ import annotations

from sdstudio.config import GenerationRequest
from sdstudio.pipelines import image_ops as ops

DEFAULT_STRENGTH = 0.8
NOISE_STD = 24.0  # std of the noise added to the edge colour, 0-255 scale


def plan_outpaint(request: GenerationRequest) -> tuple[GenerationRequest, tuple[int, int, int, int]]:
    """The inpainting request that outpaints ``request`` and the canvas box to paste back into.

    Output size is ``(w + left + right, h + up + down)``; the work size is the next multiple of 8.
    The request has resolved seeds (the canvas noise is drawn from ``request.seed``).
    """
    left, right, up, down = request.outpaint
    original = ops.load_image(request.init_images[0], field="init_images")
    canvas, mask = ops.extend_canvas(
        ops.flatten(original),
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
        width=ceil8(canvas.width),
        height=ceil8(canvas.height),
        inpaint_full_res=False,
        inpainting_mask_invert=False,
        denoising_strength=DEFAULT_STRENGTH
        if request.denoising_strength is None
        else request.denoising_strength,
        extra={**request.extra, "Outpaint": sides, "Init image hash": ops.image_hash(original)},
        init_images=(canvas,),
        mask=mask,
        outpaint=None,
    )
    return work, (0, 0, canvas.width, canvas.height)


def outpaint_size(image_width: int, image_height: int, sides: tuple[int, int, int, int]) -> tuple[int, int]:
    """Work size (multiples of 8) of an image grown by ``sides`` = (left, right, up, down)."""
    left, right, up, down = sides
    return ceil8(image_width + left + right), ceil8(image_height + up + down)


def ceil8(value: int) -> int:
    return -(-value // 8) * 8
