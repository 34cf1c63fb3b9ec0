"""A1111's Extras upscale (``scripts/postprocessing_upscale.py``): upscaler 1, optionally blended with
upscaler 2, by a factor or to a size (with an optional centre crop)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.upscale.tiles import DEFAULT_OVERLAP, DEFAULT_TILE, TileProgress

BUILTIN_RESAMPLE = {"lanczos": Image.Resampling.LANCZOS, "nearest": Image.Resampling.NEAREST}
MAX_SCALE = 8.0  # A1111's Extras slider goes to 8


@dataclass(frozen=True)
class ExtrasOptions:
    """The upscale part of an A1111 extras request (resize_mode 0: by ``scale``; 1: to ``size``)."""

    upscaler_1: str = "None"
    upscaler_2: str = "None"
    upscaler_2_visibility: float = 0.0
    resize_mode: int = 0
    scale: float = 2.0
    size: tuple[int, int] = (512, 512)
    crop: bool = True

    def factor(self, image_size: tuple[int, int]) -> float:
        """The upscale factor: ``scale``, or for mode 1 the larger ratio of target to image side."""
        if self.resize_mode == 1:
            return max(self.size[0] / image_size[0], self.size[1] / image_size[1])
        return self.scale

    def output_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the result, as A1111's ``Upscaler.upscale`` rounds it (down to 8)."""
        if self.upscaler_1 == "None":
            return image_size
        if self.resize_mode == 1 and self.crop:
            return self.size
        f = self.factor(image_size)
        return max(8, int(image_size[0] * f // 8 * 8)), max(8, int(image_size[1] * f // 8 * 8))

    def check(self, image_size: tuple[int, int], max_pixels: int) -> None:
        """SDStudioError (422) for a factor out of (0, 8], a bad mode, or a result over ``max_pixels``."""
        if self.resize_mode not in (0, 1):
            raise SDStudioError("resize_mode must be 0 (scale by) or 1 (scale to)", field="resize_mode")
        if self.resize_mode == 0 and not 0 < self.scale <= MAX_SCALE:
            raise SDStudioError(f"upscaling_resize must be in (0, {MAX_SCALE:g}]", field="upscaling_resize")
        if self.resize_mode == 1 and not (0 < self.size[0] and 0 < self.size[1]):
            raise SDStudioError("upscaling_resize_w and _h must be positive", field="upscaling_resize_w")
        if not 0 <= self.upscaler_2_visibility <= 1:
            raise SDStudioError(
                "extras_upscaler_2_visibility must be in [0, 1]", field="extras_upscaler_2_visibility"
            )
        w, h = self.output_size(image_size)
        if w * h > max_pixels:
            raise SDStudioError(
                f"the upscaled image would be {w}x{h} = {w * h} pixels, over the limit of {max_pixels} pixels",
                field="upscaling_resize",
            )

    def infotext(self, image_size: tuple[int, int]) -> dict[str, Any]:
        """A1111's postprocessing parameters for this upscale."""
        if self.upscaler_1 == "None":
            return {}
        info: dict[str, Any] = {}
        if self.resize_mode == 1:
            info["Postprocess upscale to"] = f"{self.size[0]}x{self.size[1]}"
            if self.crop:
                info["Postprocess crop to"] = f"{self.size[0]}x{self.size[1]}"
        else:
            info["Postprocess upscale by"] = self.scale
        info["Postprocess upscaler"] = self.upscaler_1
        if self.upscaler_2 != "None" and self.upscaler_2_visibility > 0:
            info["Postprocess upscaler 2"] = self.upscaler_2
        return info


def upscale_by_name(
    image: Image.Image,
    name: str,
    factor: float,
    load: Callable[[str], Any],
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: TileProgress | None = None,
) -> Image.Image:
    """A1111 ``Upscaler.upscale``: to ``int(side * factor) // 8 * 8`` with a built-in (Lanczos, Nearest)
    or a model upscaler that ``load(name)`` returns (:class:`~sdstudio.upscale.load.LoadedUpscaler`)."""
    from sdstudio.upscale.image import upscale_to

    size = max(8, int(image.width * factor // 8 * 8)), max(8, int(image.height * factor // 8 * 8))
    resample = BUILTIN_RESAMPLE.get(name.strip().lower())
    if resample is not None:
        return image.convert("RGB").resize(size, resample=resample)
    return upscale_to(load(name), image, size, tile=tile, overlap=overlap, progress=progress)


def run_extras(
    image: Image.Image,
    options: ExtrasOptions,
    load: Callable[[str], Any],
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    progress: TileProgress | None = None,
) -> tuple[Image.Image, dict[str, Any]]:
    """Upscale one image as A1111's Extras tab does; returns (image, postprocessing infotext)."""
    image = image.convert("RGB")
    if options.upscaler_1 == "None":
        return image, {}
    factor = options.factor(image.size)
    kw = {"tile": tile, "overlap": overlap, "progress": progress}
    out = upscale_by_name(image, options.upscaler_1, factor, load, **kw)
    if options.upscaler_2 != "None" and options.upscaler_2_visibility > 0:
        second = upscale_by_name(image, options.upscaler_2, factor, load, **kw)
        if second.size != out.size:
            second = second.resize(out.size, resample=Image.Resampling.LANCZOS)
        out = Image.blend(out, second, options.upscaler_2_visibility)
    if options.resize_mode == 1 and options.crop:
        w, h = options.size
        cropped = Image.new("RGB", (w, h))
        cropped.paste(out, box=(w // 2 - out.width // 2, h // 2 - out.height // 2))
        out = cropped
    return out, options.infotext(image.size)
