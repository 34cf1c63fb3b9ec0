"""Pure image utilities for the image-to-image family (PIL / numpy / torch; no models).

Each function follows the AUTOMATIC1111 web UI behaviour it names (``modules/images.py``
``resize_image``/``flatten``, ``modules/masking.py``, ``modules/processing.py``
``StableDiffusionProcessingImg2Img.init``/``apply_overlay``/``uncrop``), so that a request
sent to sdstudio and to A1111 prepares the same pixels, masks and crop boxes.

Conventions: masks are PIL ``L`` images where 255 (white) means "repaint"; a crop box is
``(x1, y1, x2, y2)`` with exclusive right/bottom edges (PIL's ``crop`` convention); a paste
location is ``(x, y, w, h)`` as A1111's ``paste_to``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError
from scipy import ndimage

from sdstudio.errors import SDStudioError

LANCZOS = Image.Resampling.LANCZOS
Box = tuple[int, int, int, int]
ImageInput = Image.Image | bytes | bytearray | str | Path

RESIZE_MODES = {0: "Just resize", 1: "Crop and resize", 2: "Resize and fill"}
INPAINTING_FILL = {0: "fill", 1: "original", 2: "latent noise", 3: "latent nothing"}
DEFAULT_MAX_PIXELS = 4096 * 4096


# --------------------------------------------------------------------------- loading, validation


def load_image(source: ImageInput, *, field: str = "init_images", max_pixels: int = DEFAULT_MAX_PIXELS):
    """Return a fully decoded PIL image from bytes, a path or an image; bad input -> SDStudioError.

    Non-image bytes, truncated files and decompression bombs (more than ``max_pixels``) are
    user errors with a message that names ``field``; nothing else escapes.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, field, max_pixels)
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise SDStudioError(f"{field}: no such image file: {path}", field=field)
        source = path.read_bytes()
    if not isinstance(source, (bytes, bytearray)) or not source:
        raise SDStudioError(f"{field}: expected image bytes (PNG, JPEG, WebP...), got nothing", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(bytes(source)))
            _check_pixels(image.size, field, max_pixels)
            image.load()
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombWarning,
        Image.DecompressionBombError,
    ) as exc:
        if isinstance(exc, SDStudioError):
            raise
        raise SDStudioError(
            f"{field}: not a readable image ({type(exc).__name__}: {exc})", field=field, status=400
        ) from None
    return image


def decode_base64_image(text: str, *, field: str = "init_images", max_pixels: int = DEFAULT_MAX_PIXELS):
    """Return the image in an A1111 API string: base64, with or without a ``data:image/...;base64,`` prefix."""
    if not isinstance(text, str) or not text.strip():
        raise SDStudioError(f"{field}: expected a base64-encoded image string", field=field, status=400)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SDStudioError(f"{field}: not valid base64", field=field, status=400) from None
    return load_image(raw, field=field, max_pixels=max_pixels)


def _check_pixels(size: tuple[int, int], field: str, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise SDStudioError(
            f"{field}: image is {w}x{h}; at most {max_pixels} pixels are allowed", field=field
        )


def check_strength(strength: float | None, field: str = "denoising_strength") -> float:
    """Return ``strength`` as a float in [0, 1] or raise SDStudioError (A1111 slider range)."""
    try:
        value = float(strength)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise SDStudioError(f"{field} must be a number in [0, 1], got {strength!r}", field=field) from None
    if not 0.0 <= value <= 1.0:
        raise SDStudioError(f"{field} must be in [0, 1], got {value:g}", field=field)
    return value


def check_mask(mask: Image.Image, image: Image.Image, field: str = "mask") -> None:
    """Raise SDStudioError when ``mask`` has another size than ``image`` or paints nothing."""
    if mask.size != image.size:
        raise SDStudioError(
            f"{field} is {mask.width}x{mask.height} but the init image is {image.width}x{image.height}; "
            "they must be the same size",
            field=field,
        )
    if binary_mask(mask).getbbox() is None:
        raise SDStudioError(f"{field} is empty (all black): paint the area to repaint in white", field=field)


def image_hash(image: Image.Image) -> str:
    """A1111 "Init image hash": md5 hex digest of the decoded pixel bytes (``img.tobytes()``).

    A1111 ``processing.py`` computes ``hashlib.md5(img.tobytes()).hexdigest()`` on the init
    image as received (before flattening/resizing), so it identifies pixels, not the PNG file.
    """
    return hashlib.md5(image.tobytes()).hexdigest()


# --------------------------------------------------------------------------- resizing


def flatten(image: Image.Image, background: str = "#ffffff") -> Image.Image:
    """Return an RGB image with transparency composited on ``background`` (A1111 ``images.flatten``)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        base = Image.new("RGBA", image.size, background)
        base.alpha_composite(image)
        image = base
    return image.convert("RGB")


def resize_image(mode: int, image: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to (width, height) with A1111's resize modes (``images.resize_image``), Lanczos.

    0 "Just resize": stretch. 1 "Crop and resize": scale to cover, centre, crop the excess.
    2 "Resize and fill": scale to fit, centre, and fill the bands by stretching the edge rows
    (or columns) of the scaled image. The image mode is kept (masks stay ``L``).
    """
    if mode == 0:
        return image.resize((width, height), resample=LANCZOS)
    if mode not in (1, 2):
        raise SDStudioError(f"resize_mode must be 0, 1 or 2, got {mode!r}", field="resize_mode")
    ratio, src_ratio = width / height, image.width / image.height
    # mode 1 scales so the image covers the target (match the tighter side), mode 2 so it fits
    match_width = ratio > src_ratio if mode == 1 else ratio < src_ratio
    src_w = width if match_width else image.width * height // image.height
    src_h = image.height * width // image.width if match_width else height
    resized = image.resize((max(src_w, 1), max(src_h, 1)), resample=LANCZOS)
    result = Image.new(image.mode, (width, height))
    result.paste(resized, (width // 2 - src_w // 2, height // 2 - src_h // 2))
    if mode == 2:
        _fill_bands(result, resized, ratio, src_ratio)
    return result


def _fill_bands(result: Image.Image, resized: Image.Image, ratio: float, src_ratio: float) -> None:
    """Fill the empty bands of a "resize and fill" canvas by stretching the edge row/column.

    As A1111, the band is a Lanczos resize of a zero-height (or zero-width) box on the edge,
    which Pillow samples from the rows (columns) next to that edge.
    """
    width, height = result.size
    w, h = resized.size
    if ratio < src_ratio:  # bands above and below
        band = height // 2 - h // 2
        if band > 0:
            result.paste(resized.resize((width, band), box=(0, 0, width, 0)), (0, 0))
            result.paste(resized.resize((width, band), box=(0, h, width, h)), (0, band + h))
    elif ratio > src_ratio:  # bands left and right
        band = width // 2 - w // 2
        if band > 0:
            result.paste(resized.resize((band, height), box=(0, 0, 0, height)), (0, 0))
            result.paste(resized.resize((band, height), box=(w, 0, w, height)), (band + w, 0))


# --------------------------------------------------------------------------- masks


def binary_mask(mask: Image.Image, round_mask: bool = True) -> Image.Image:
    """Return an ``L`` mask (A1111 ``create_binary_mask``): alpha of an RGBA mask with real
    transparency, else luminance; thresholded at > 128 to 0/255 when ``round_mask``."""
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.getchannel("A")
    else:
        mask = mask.convert("L")
    if round_mask:
        mask = mask.point(lambda v: 255 if v > 128 else 0)
    return mask


def gaussian_kernel(sigma: float) -> np.ndarray:
    """Return OpenCV's 1-D Gaussian kernel of size ``2*int(2.5*sigma+0.5)+1`` (A1111 mask blur)."""
    size = 2 * int(2.5 * sigma + 0.5) + 1
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    kernel = np.exp(-(x**2) / (2 * sigma**2))
    return kernel / kernel.sum()


def blur_mask(mask: Image.Image, blur_x: float, blur_y: float | None = None) -> Image.Image:
    """Gaussian-blur an ``L`` mask separately along x then y, as A1111 (``cv2.GaussianBlur`` with
    kernel ``(2*int(2.5*s+0.5)+1, 1)`` then ``(1, k)``, reflect-101 borders); 0 skips an axis.

    Matches OpenCV to within 1 level per blurred axis (its 8-bit path rounds in fixed point).
    """
    blur_y = blur_x if blur_y is None else blur_y
    arr = np.asarray(mask.convert("L"), dtype=np.float64)  # (H, W)
    for axis, sigma in ((1, blur_x), (0, blur_y)):
        if sigma and sigma > 0:
            arr = ndimage.convolve1d(arr, gaussian_kernel(sigma), axis=axis, mode="mirror")
            arr = np.clip(np.rint(arr), 0, 255)
    return Image.fromarray(arr.astype(np.uint8), "L")


def prepare_mask(
    mask: Image.Image,
    *,
    invert: bool = False,
    blur_x: float = 4,
    blur_y: float | None = None,
    round_mask: bool = True,
) -> Image.Image:
    """Return the working mask: binarize, optionally invert ("Inpaint not masked"), then blur (A1111 order)."""
    mask = binary_mask(mask, round_mask)
    if invert:
        mask = ImageOps.invert(mask)
    return blur_mask(mask, blur_x, blur_y)


def overlay_mask(mask: Image.Image) -> Image.Image:
    """Return A1111's ``mask_for_overlay`` for whole-picture inpainting: the blurred mask doubled
    and clipped, so pixels with mask >= 0.5 are fully repainted and mask 0 stays the original."""
    arr = np.asarray(mask.convert("L"), dtype=np.float32) * 2
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")


def latent_mask(mask: Image.Image, latent_h: int, latent_w: int, round_mask: bool = True) -> torch.Tensor:
    """Return the repaint mask at latent resolution, (1, 1, h, w) in [0, 1] (A1111 ``nmask``).

    A1111 resizes the RGB-converted mask with PIL's default (bicubic) filter and rounds it when
    ``mask_round``; ``1 - mask`` is the keep-the-original weight.
    """
    small = mask.convert("RGB").resize((latent_w, latent_h), resample=Image.Resampling.BICUBIC)
    arr = np.asarray(small, dtype=np.float32)[..., 0] / 255.0  # (h, w)
    if round_mask:
        arr = np.around(arr)
    return torch.from_numpy(arr)[None, None]


def crop_region(mask: Image.Image, pad: int = 0) -> Box | None:
    """Return the bounding box of the non-zero mask plus ``pad`` px, clamped to the image, or
    None for an empty mask (A1111 ``masking.get_crop_region_v2``)."""
    box = mask.convert("L").getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.width), min(y2 + pad, mask.height)


def expand_crop_region(region: Box, target_w: int, target_h: int, image_w: int, image_h: int) -> Box:
    """Grow ``region`` to the aspect ratio of the processing size, shifted to stay inside the
    image where possible (A1111 ``masking.expand_crop_region``; a 128x32 box for 512x512 -> 128x128)."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > target_w / target_h:
        y1, y2 = _grow_span(y1, y2, (x2 - x1) / (target_w / target_h), image_h)
    else:
        x1, x2 = _grow_span(x1, x2, (y2 - y1) * (target_w / target_h), image_w)
    return x1, y1, x2, y2


def _grow_span(lo: int, hi: int, desired: float, limit: int) -> tuple[int, int]:
    """Widen [lo, hi) to ``desired`` length around its centre, then slide it back inside [0, limit)."""
    diff = int(desired - (hi - lo))
    lo, hi = lo - diff // 2, hi + diff - diff // 2
    if hi >= limit:
        lo, hi = lo - (hi - limit), limit
    if lo < 0:
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


# --------------------------------------------------------------------------- fills and compositing


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Fill the masked area with blurred colours of its surroundings (A1111 masked content "fill").

    As ``masking.fill``: the unmasked pixels (premultiplied alpha) are blurred at radii 256, 64,
    16, 4, 2, 0 and alpha-composited in that order, so each pixel takes the nearest colours.
    """
    keep = ImageOps.invert(mask.convert("L"))
    visible = Image.new("RGBa", image.size)
    visible.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = visible.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def make_overlay(image: Image.Image, overlay_mask_image: Image.Image) -> Image.Image:
    """Return the original as RGBA with alpha = 255 - mask: what ``apply_overlay`` pastes back."""
    overlay = Image.new("RGBa", image.size)
    overlay.paste(
        image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(overlay_mask_image.convert("L"))
    )
    return overlay.convert("RGBA")


def uncrop(
    image: Image.Image, dest_size: tuple[int, int], paste_loc: tuple[int, int, int, int]
) -> Image.Image:
    """Return a transparent ``dest_size`` RGBA canvas with ``image`` resized (crop-and-resize) into
    ``paste_loc`` = (x, y, w, h) (A1111 ``processing.uncrop``)."""
    x, y, w, h = paste_loc
    canvas = Image.new("RGBA", dest_size)
    canvas.paste(resize_image(1, image, w, h), (x, y))
    return canvas


def apply_overlay(
    image: Image.Image, overlay: Image.Image, paste_loc: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Paste a generated image back over the original (A1111 ``apply_overlay``), returning RGB.

    With ``paste_loc`` ("only masked") the result is first uncropped into the full canvas; then
    the overlay (original pixels, alpha = 1 - mask) is composited on top, so every pixel whose
    mask is 0 comes out exactly as in the original image.
    """
    if paste_loc is not None:
        image = uncrop(image, overlay.size, paste_loc)
    result = image.convert("RGBA")
    result.alpha_composite(overlay)
    return result.convert("RGB")


def extend_canvas(
    image: Image.Image,
    *,
    left: int = 0,
    right: int = 0,
    up: int = 0,
    down: int = 0,
    overlap: int = 0,
    noise: float = 24.0,
    seed: int = 0,
) -> tuple[Image.Image, Image.Image]:
    """Return (canvas, mask) for outpainting: the image padded by N px per side.

    The new area repeats the nearest edge colour (``numpy.pad`` "edge") plus Gaussian noise of
    std ``noise`` (0-255 scale, seeded) so the sampler has texture to work from, as A1111's
    "Poor man's outpainting" fills the canvas before inpainting it. The mask is white over the
    new area and reaches ``overlap`` px into the original on each extended side (A1111 uses
    ``2 * mask_blur``), so the seam is repainted.
    """
    for name, value in (("left", left), ("right", right), ("up", up), ("down", down)):
        if not isinstance(value, int) or value < 0:
            raise SDStudioError(f"outpaint {name} must be a non-negative integer, got {value!r}", field=name)
    if left + right + up + down == 0:
        raise SDStudioError(
            "outpaint needs at least one side to extend (left/right/up/down > 0)", field="left"
        )
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)  # (H, W, 3)
    padded = np.pad(arr, ((up, down), (left, right), (0, 0)), mode="edge")
    new_area = np.ones(padded.shape[:2], dtype=bool)
    new_area[up : up + image.height, left : left + image.width] = False
    rng = np.random.default_rng(seed)
    padded[new_area] += rng.normal(0.0, noise, size=(int(new_area.sum()), 3)).astype(np.float32)
    canvas = Image.fromarray(np.clip(np.rint(padded), 0, 255).astype(np.uint8), "RGB")
    return canvas, _outpaint_mask(canvas.size, image.size, (left, right, up, down), overlap)


def _outpaint_mask(
    canvas_size: tuple[int, int], image_size: tuple[int, int], sides: tuple[int, int, int, int], overlap: int
) -> Image.Image:
    """White everywhere except the kept part of the original (shrunk by ``overlap`` on extended sides)."""
    left, right, up, down = sides
    w, h = image_size
    keep = np.zeros((canvas_size[1], canvas_size[0]), dtype=bool)  # (H, W)
    x1 = left + (overlap if left else 0)
    y1 = up + (overlap if up else 0)
    x2 = left + w - (overlap if right else 0)
    y2 = up + h - (overlap if down else 0)
    if x2 > x1 and y2 > y1:
        keep[y1:y2, x1:x2] = True
    return Image.fromarray(np.where(keep, 0, 255).astype(np.uint8), "L")


# --------------------------------------------------------------------------- tensors


def images_to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Return RGB images as a float tensor (B, 3, H, W) in [-1, 1] (the VAE's input range)."""
    arrays = [np.asarray(img.convert("RGB"), dtype=np.float32) / 127.5 - 1.0 for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def tensor_to_images(x: torch.Tensor) -> list[Image.Image]:
    """Return (B, 3, H, W) tensors in [-1, 1] as RGB PIL images (clamped, rounded to uint8)."""
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in arr]
