"""PIL image in, PIL image out: A1111's ``Upscaler.upscale`` for a model upscaler."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sdstudio.upscale.load import LoadedUpscaler
from sdstudio.upscale.tiles import DEFAULT_OVERLAP, DEFAULT_TILE, TileProgress, upscale_tiled

MAX_PASSES = 3  # A1111 modules/upscaler.py: at most three model passes to reach the target size


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> (1, 3, H, W) float32 in [0, 1]."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(a).permute(2, 0, 1)[None].contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) in [0, 1] -> RGB PIL image (rounded, as A1111's ``tensor2img``)."""
    a = x[0].clamp(0, 1).mul_(255.0).round_().to(torch.uint8)  # one float copy, then 3 bytes a pixel
    return Image.fromarray(a.permute(1, 2, 0).contiguous().numpy(), "RGB")


def run_model(
    upscaler: LoadedUpscaler,
    image: Image.Image,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: TileProgress | None = None,
) -> Image.Image:
    """One pass of the model over ``image`` (tiled): the result is ``scale`` times larger."""
    model = upscaler.model
    param = next(model.model.parameters(), None)
    x = to_tensor(image)
    if param is not None:
        x = x.to(param.device, param.dtype)
    out = upscale_tiled(
        model,
        x,
        upscaler.scale,
        tile=tile,
        overlap=overlap,
        multiple_of=upscaler.multiple_of,
        progress=progress,
    )
    return to_image(out.cpu())


def upscale_to(
    upscaler: LoadedUpscaler,
    image: Image.Image,
    size: tuple[int, int],
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: TileProgress | None = None,
) -> Image.Image:
    """``image`` brought to ``size`` = (width, height): model passes until it is at least that large
    (at most :data:`MAX_PASSES`), then Lanczos to the exact size, as A1111's ``Upscaler.upscale``."""
    out = image.convert("RGB")
    for _ in range(MAX_PASSES):
        if out.width >= size[0] and out.height >= size[1]:
            break
        if upscaler.scale == 1:  # a restoration model: one pass, Lanczos does the resize
            out = run_model(upscaler, out, tile=tile, overlap=overlap, progress=progress)
            break
        out = run_model(upscaler, out, tile=tile, overlap=overlap, progress=progress)
    if out.size != tuple(size):
        out = out.resize(size, resample=Image.Resampling.LANCZOS)
    return out
