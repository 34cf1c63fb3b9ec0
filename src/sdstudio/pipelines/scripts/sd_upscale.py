"""SD upscale (A1111 ``scripts/sd_upscale.py``): upscale an image, re-run img2img over overlapping
tiles of the request's width x height, and blend the tiles back with linear ramps.

Batch ``i`` of tiles (``batch_size`` tiles each) uses seed ``seed + i`` for its first tile, as A1111
does (``p.seed = processed.seed + 1`` after each batch); each of ``n_iter`` upscales starts at
``seed + n``. The upscaler list is A1111's: the built-ins in its order, None (keep the size: only
the tiles are re-drawn), Lanczos, Nearest, then the installed model upscalers (ESRGAN, ...) as
``/sdapi/v1/upscalers`` lists them, run tile by tile by :mod:`sdstudio.upscale`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts.grid import (
    Runner,
    ScriptImage,
    ScriptResult,
    combine_grid,
    split_grid,
    with_params,
)
from sdstudio.upscale.image import upscale_to
from sdstudio.upscale.load import load_upscaler

TITLE = "SD upscale"
MAX_TILES = 256  # tiles per upscaled image (each is one img2img run)
UPSCALERS = {"None": None, "Lanczos": Image.Resampling.LANCZOS, "Nearest": Image.Resampling.NEAREST}


@dataclass
class UpscaleOptions:
    """A1111 ``script_args``: [info (ignored), overlap, upscaler_index, scale_factor]."""

    overlap: int = 64
    upscaler: str = "None"
    scale_factor: float = 2.0
    upscaler_path: str = ""  # a model upscaler's file, resolved from its name or index when parsed


def upscaled_size(size: tuple[int, int], upscaler: str, scale: float) -> tuple[int, int]:
    """The upscaled image's (width, height): ``int(side * scale) // 8 * 8`` (A1111), or unchanged for None."""
    if upscaler == "None":
        return size
    return max(8, int(size[0] * scale) // 8 * 8), max(8, int(size[1] * scale) // 8 * 8)


def upscale(image: Image.Image, upscaler: str, scale: float, path: str = "") -> Image.Image:
    """A1111 ``Upscaler.upscale``: to ``int(side * scale) // 8 * 8`` with a built-in, or with the model
    upscaler in ``path`` (model passes, then Lanczos to the exact size)."""
    size = upscaled_size(image.size, upscaler, scale)
    if path:
        return upscale_to(load_upscaler(path), image, size)
    if UPSCALERS[upscaler] is None:
        return image
    return image.resize(size, resample=UPSCALERS[upscaler])


def check_cost(base: GenerationRequest, options: UpscaleOptions, max_pixels: int) -> None:
    """Refuse before queueing an upscale whose image exceeds ``max_pixels`` (the server's
    ``--max-image-pixels``) or that would take more than :data:`MAX_TILES` tiles."""
    size = getattr(base.init_images[0], "size", None) if base.init_images else None
    if size is None:  # not decoded yet: checked when it runs
        return
    w, h = upscaled_size(size, options.upscaler, options.scale_factor)
    if w * h > max_pixels:
        raise SDStudioError(
            f"SD upscale: the upscaled image would be {w}x{h}, over the limit of {max_pixels} pixels",
            field="script_args",
        )
    step_w, step_h = max(1, base.width - options.overlap), max(1, base.height - options.overlap)
    tiles = math.ceil(max(1, w - options.overlap) / step_w) * math.ceil(max(1, h - options.overlap) / step_h)
    if tiles > MAX_TILES:
        raise SDStudioError(
            f"SD upscale: {tiles} tiles of {base.width}x{base.height} with overlap {options.overlap} "
            f"(at most {MAX_TILES}); raise width/height or lower the overlap",
            field="script_args",
        )


def run_sd_upscale(
    base: GenerationRequest, init_image: Image.Image, options: UpscaleOptions, runner: Runner
) -> ScriptResult:
    """Upscale ``init_image`` and redraw it tile by tile; one result image per ``n_iter``."""
    base = base.with_resolved_seeds()
    if options.overlap >= min(base.width, base.height):
        raise SDStudioError(
            "SD upscale: the tile overlap must be smaller than width and height", field="script_args"
        )
    big = upscale(init_image.convert("RGB"), options.upscaler, options.scale_factor, options.upscaler_path)
    if big.width < base.width or big.height < base.height:
        raise SDStudioError(
            f"SD upscale: the upscaled image ({big.width}x{big.height}) is smaller than one tile "
            f"({base.width}x{base.height}); lower width/height or raise the scale factor",
            field="script_args",
        )
    extra = {"SD upscale overlap": options.overlap, "SD upscale upscaler": options.upscaler}
    results, calls, first_info = [], 0, ""
    for n in range(base.n_iter):
        tiles = split_grid(big, base.width, base.height, options.overlap)
        work = [t for _, _, row in tiles.rows for t in row]
        done: list[Any] = []
        for i in range(math.ceil(len(work) / base.batch_size)):
            chunk = work[i * base.batch_size : (i + 1) * base.batch_size]
            request = base.replace(seed=base.seed + n + i, batch_size=len(chunk), n_iter=1)
            generated = runner(request, init_images=[t[2] for t in chunk])
            calls += 1
            first_info = first_info or (generated[0].infotext if generated else "")
            done += [g.image for g in generated]
        for k, tile in enumerate(work):
            tile[2] = done[k] if k < len(done) else Image.new("RGB", (base.width, base.height))
        info = with_params(first_info, extra) if first_info else ""
        results.append(
            ScriptImage(combine_grid(tiles), info, base.seed + n, base.subseed, prompt=base.prompt)
        )
    return ScriptResult(images=results, cells=[], runner_calls=calls)


def options_from_args(script_args: list, upscalers: Sequence[Any] = ()) -> UpscaleOptions:
    """:class:`UpscaleOptions` from A1111 ``script_args`` (upscaler by index or by name); the indexes
    after the built-ins are the installed model ``upscalers`` (:class:`sdstudio.upscale.UpscalerFile`)
    in their order, as A1111's ``shared.sd_upscalers``."""
    defaults: list[Any] = [None, 64, 0, 2.0]
    if not isinstance(script_args, list) or len(script_args) > len(defaults):
        raise SDStudioError(
            "script_args for SD upscale must be a list of at most 4 values", field="script_args"
        )
    a = list(script_args) + defaults[len(script_args) :]
    names = [*UPSCALERS, *(f.name for f in upscalers)]
    up = a[2]
    if isinstance(up, int) and not isinstance(up, bool) and 0 <= up < len(names):
        name = names[up]
    elif isinstance(up, str) and up.strip().lower() in {n.lower(): n for n in names}:
        name = {n.lower(): n for n in names}[up.strip().lower()]
    else:
        raise SDStudioError(
            f"SD upscale: unknown upscaler {up!r}; choose one of {names} (or 0..{len(names) - 1})",
            field="script_args",
        )
    try:
        overlap, scale = int(a[1]), float(a[3])
    except (TypeError, ValueError, OverflowError):
        raise SDStudioError(
            "SD upscale: overlap must be an integer and scale_factor a number", field="script_args"
        ) from None
    if not 0 <= overlap <= 256 or not 0 < scale <= 4:
        raise SDStudioError(
            "SD upscale: overlap must be in [0, 256] and scale_factor in (0, 4]", field="script_args"
        )
    path = next((str(f.path) for f in upscalers if f.name == name), "")
    return UpscaleOptions(overlap, name, scale, path)
