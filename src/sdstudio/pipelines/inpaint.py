"""Inpainting: mask preparation, "only masked" crops, latent blending and 9-channel conditioning.

A1111 ``StableDiffusionProcessingImg2Img.init`` semantics: the mask is binarized, optionally
inverted, blurred (separate x/y); with "only masked" (``inpaint_full_res``) the mask's bounding
box plus padding, grown to the processing aspect ratio, is cropped, processed at full
resolution and pasted back with the blurred mask as a feathered edge. Pixels whose mask is 0
are restored exactly from the original after decoding (``apply_overlay``).

Two ways of keeping the unmasked area: every checkpoint gets A1111's ``CFGDenoiser`` mask
blend (the denoised prediction is reset to the original outside the mask after every model
call, and the final latents once more), and dedicated 9-channel checkpoints
(``model.is_inpainting``) also receive ``[latent, mask, masked_image_latent]`` as UNet input
(A1111 ``inpainting_image_conditioning``), as A1111 does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops


@dataclass
class PreparedInputs:
    """What the sampler needs from the init images and mask, all at the processing size."""

    images: list[Image.Image]  # RGB, (width, height): what the VAE encodes
    mask: Image.Image | None = None  # L, (width, height), blurred: latent mask + 9-channel conditioning
    overlays: list[Image.Image] = field(default_factory=list)  # RGBA at the original size, for paste-back
    paste_loc: tuple[int, int, int, int] | None = None  # (x, y, w, h) of the crop in the original
    extra: dict[str, Any] = field(default_factory=dict)  # infotext keys, A1111 names and order


def prepare_inputs(
    request: Any,
    init_images: list[Image.Image],
    mask: Image.Image | None = None,
    *,
    region: tuple[int, int, int, int] | None = None,
) -> PreparedInputs:
    """Resize/crop/fill the init images and mask as A1111's img2img ``init`` does.

    ``request`` supplies width, height, resize_mode, mask_blur, inpainting_fill,
    inpaint_full_res(_padding) and inpainting_mask_invert. ``region`` forces a crop box (the
    outpainting canvas); otherwise "only masked" finds it from the mask.
    """
    width, height = request.width, request.height
    images = [ops.flatten(img) for img in init_images]
    if mask is None:
        return PreparedInputs([ops.resize_image(request.resize_mode, img, width, height) for img in images])
    work_mask = _working_mask(mask, images, request)
    extra = _mask_infotext(request)
    if region is None and request.inpaint_full_res:
        region = _only_masked_region(work_mask, request)
        extra.update({"Inpaint area": "Only masked", "Masked area padding": request.inpaint_full_res_padding})
    if region is None:  # whole picture: overlay = the doubled mask at processing size
        proc_mask = ops.resize_image(request.resize_mode, work_mask, width, height)
        prepared = PreparedInputs([], proc_mask, [], None, extra)
        overlay_mask = ops.overlay_mask(proc_mask)
    else:  # crop: overlay = the blurred mask at the original size
        proc_mask = ops.resize_image(2, work_mask.crop(region), width, height)
        x1, y1, x2, y2 = region
        prepared = PreparedInputs([], proc_mask, [], (x1, y1, x2 - x1, y2 - y1), extra)
        overlay_mask = work_mask
    for img in images:
        _add_image(prepared, img, overlay_mask, region, request)
    return prepared


def _working_mask(mask: Image.Image, images: list[Image.Image], request: Any) -> Image.Image:
    """Check the mask against every init image, then binarize, invert and blur it (A1111 order)."""
    for img in images:
        ops.check_mask(mask, img)
    work_mask = ops.prepare_mask(
        mask, invert=request.inpainting_mask_invert, blur_x=request.mask_blur, blur_y=request.mask_blur
    )
    if work_mask.getbbox() is None:
        raise SDStudioError("mask is empty after inverting: nothing to inpaint", field="mask")
    return work_mask


def _add_image(
    prepared: PreparedInputs,
    img: Image.Image,
    overlay_mask: Image.Image,
    region: tuple[int, int, int, int] | None,
    request: Any,
) -> None:
    """Append one init image's overlay (for paste-back) and its processing-size pixels."""
    size = (request.width, request.height)
    if region is None:
        img = ops.resize_image(request.resize_mode, img, *size)
    prepared.overlays.append(ops.make_overlay(img, overlay_mask))
    if region is not None:
        img = ops.resize_image(2, img.crop(region), *size)
    if request.inpainting_fill == 0:
        img = ops.fill_masked(img, prepared.mask)
    prepared.images.append(img)


def _mask_infotext(request: Any) -> dict[str, Any]:
    """Infotext keys A1111 writes for a masked job (``Mask blur``, ``Mask mode``, ``Masked content``)."""
    extra: dict[str, Any] = {"Mask blur": request.mask_blur}
    if request.inpainting_mask_invert:
        extra["Mask mode"] = "Inpaint not masked"
    if request.inpainting_fill != 1:
        extra["Masked content"] = ops.INPAINTING_FILL[request.inpainting_fill]
    return extra


def _only_masked_region(work_mask: Image.Image, request: Any) -> tuple[int, int, int, int]:
    """The "only masked" crop box: mask bbox + padding, grown to the processing aspect ratio."""
    padding = request.inpaint_full_res_padding
    if not isinstance(padding, int) or padding < 0:
        raise SDStudioError(
            f"inpaint_full_res_padding must be a non-negative number of pixels, got {padding!r}",
            field="inpaint_full_res_padding",
        )
    box = ops.crop_region(work_mask, padding)
    assert box is not None  # prepare_inputs rejected empty masks
    return ops.expand_crop_region(box, request.width, request.height, work_mask.width, work_mask.height)


def paste_back(image: Image.Image, prepared: PreparedInputs, index: int) -> Image.Image:
    """Return the final image: the decoded output composited under the original's overlay."""
    if not prepared.overlays:
        return image
    return ops.apply_overlay(image, prepared.overlays[index % len(prepared.overlays)], prepared.paste_loc)


# --------------------------------------------------------------------------- latent-space pieces


def latent_masks(prepared: PreparedInputs, latents: torch.Tensor) -> torch.Tensor:
    """Return the repaint mask at latent size, (1, 1, h, w) broadcastable over (B, C, h, w)."""
    h, w = latents.shape[-2:]
    return ops.latent_mask(prepared.mask, h, w).to(latents.device, latents.dtype)


def fill_latents(
    init_latents: torch.Tensor, nmask: torch.Tensor, fill: int, noise: torch.Tensor
) -> torch.Tensor:
    """Apply A1111 masked content 2 "latent noise" (masked area = N(0, 1)) or 3 "latent nothing" (0).

    Modes 0 "fill" and 1 "original" act on pixels before encoding, so latents pass unchanged.
    """
    if fill == 2:
        return init_latents * (1 - nmask) + noise * nmask
    if fill == 3:
        return init_latents * (1 - nmask)
    return init_latents


def denoised_blend(
    init_latents: torch.Tensor, nmask: torch.Tensor
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return ``post_denoise(denoised, sigma)`` that keeps the unmasked area on the original.

    A1111 ``CFGDenoiser.forward`` (``mask_before_denoising`` off): after every model call the
    prediction becomes ``init * (1 - nmask) + denoised * nmask``, so the sampler steps the kept
    area towards the original and only the masked area towards what the model made.
    """

    def post_denoise(denoised: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        m = nmask.to(denoised)  # the loop may run on another device/dtype than the VAE
        return init_latents.to(denoised) * (1 - m) + denoised * m

    return post_denoise


def pixel_mask_tensor(mask: Image.Image) -> torch.Tensor:
    """Return the processing-size mask as (1, 1, H, W) rounded to 0/1 (A1111 ``round_image_mask``)."""
    return (ops.images_to_tensor([mask])[:, :1] * 0.5 + 0.5).round()
