"""Pure image utilities: A1111 resize modes, masks, crop boxes, fills, overlay paste-back, outpaint canvas."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops


def _gradient(w: int, h: int) -> Image.Image:
    """An RGB image whose every pixel differs from its neighbours (so crops/offsets are visible)."""
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _rect_mask(size, box) -> Image.Image:
    arr = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr, "L")


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- loading and validation


def test_load_image_roundtrips_png_bytes():
    img = _gradient(20, 12)
    loaded = ops.load_image(_png_bytes(img))
    assert loaded.size == (20, 12)
    assert np.array_equal(np.asarray(loaded.convert("RGB")), np.asarray(img))


@pytest.mark.parametrize("payload", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 30, b""])
def test_load_image_rejects_non_images(payload):
    with pytest.raises(SDStudioError) as err:
        ops.load_image(payload, field="init_images")
    assert err.value.field == "init_images"
    assert "init_images" in str(err.value)


def test_decode_base64_with_and_without_data_prefix():
    import base64

    img = _gradient(9, 7)
    b64 = base64.b64encode(_png_bytes(img)).decode()
    for text in (b64, "data:image/png;base64," + b64, b64[:20] + "\n" + b64[20:]):
        assert np.array_equal(np.asarray(ops.decode_base64_image(text).convert("RGB")), np.asarray(img))
    for bad, message in (
        ("%%%", "not valid base64"),
        ("", "base64-encoded"),
        ("aGVsbG8=", "not a readable image"),
    ):
        with pytest.raises(SDStudioError, match=message) as err:
            ops.decode_base64_image(bad, field="mask")
        assert err.value.field == "mask" and err.value.status == 400


def test_load_image_rejects_missing_file(tmp_path):
    with pytest.raises(SDStudioError, match="no such image file"):
        ops.load_image(tmp_path / "nope.png")


def test_load_image_rejects_too_many_pixels():
    with pytest.raises(SDStudioError, match="at most 100 pixels"):
        ops.load_image(_png_bytes(_gradient(20, 12)), max_pixels=100)


@pytest.mark.parametrize("bad", [1.5, -0.1, "x", None])
def test_check_strength_rejects_out_of_range(bad):
    with pytest.raises(SDStudioError) as err:
        ops.check_strength(bad)
    assert err.value.field == "denoising_strength"


def test_check_strength_accepts_bounds():
    assert ops.check_strength(0) == 0.0 and ops.check_strength(1) == 1.0


def test_check_mask_size_mismatch_and_empty():
    img = _gradient(32, 32)
    with pytest.raises(SDStudioError, match="16x32 but the init image is 32x32"):
        ops.check_mask(Image.new("L", (16, 32), 255), img)
    with pytest.raises(SDStudioError, match="empty"):
        ops.check_mask(Image.new("L", (32, 32), 0), img)
    # a faint (< 50%) mask binarizes to nothing, as in A1111's create_binary_mask
    with pytest.raises(SDStudioError, match="empty"):
        ops.check_mask(Image.new("L", (32, 32), 100), img)
    ops.check_mask(_rect_mask((32, 32), (4, 4, 8, 8)), img)


def test_image_hash_is_md5_of_pixels_not_file_bytes():
    img = _gradient(10, 10)
    assert ops.image_hash(img) == hashlib.md5(img.tobytes()).hexdigest()
    reloaded = ops.load_image(_png_bytes(img))
    assert ops.image_hash(reloaded) == ops.image_hash(img)
    assert ops.image_hash(_gradient(10, 11)) != ops.image_hash(img)


# ---------------------------------------------------------------- resize modes


def test_resize_mode_0_stretches():
    out = ops.resize_image(0, _gradient(40, 20), 16, 16)
    assert out.size == (16, 16)


def test_resize_mode_1_crops_centre():
    # a 40x20 image with a red left quarter and blue right quarter: crop-and-resize to 20x20
    arr = np.full((20, 40, 3), 128, np.uint8)
    arr[:, :10] = (255, 0, 0)
    arr[:, 30:] = (0, 0, 255)
    out = np.asarray(ops.resize_image(1, Image.fromarray(arr), 20, 20)).astype(int)
    assert out.shape == (20, 20, 3)
    # scaled to 40x20 (already), centred -> columns 10..29 of the source: no red/blue survives
    assert np.abs(out - 128).max() <= 2


def test_resize_mode_2_fills_bands_with_edge_rows():
    # 40x20 into 20x20: fit -> 20x10 centred, bands of 5 rows above/below stretched from edges
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:4, :] = (0, 255, 0)  # top rows green
    arr[-4:, :] = (255, 0, 255)  # bottom rows magenta
    arr[4:-4] = (50, 50, 50)
    out = np.asarray(ops.resize_image(2, Image.fromarray(arr), 20, 20)).astype(int)
    assert out.shape == (20, 20, 3)
    top_band, bottom_band = out[:5], out[15:]
    assert top_band[..., 1].min() > 150 and top_band[..., 0].max() < 100  # greenish
    assert bottom_band[..., 0].min() > 150 and bottom_band[..., 1].max() < 100  # magenta-ish
    assert np.abs(out[8:12] - 50).max() <= 8


def test_resize_mode_2_keeps_mask_mode_and_fills_columns():
    mask = _rect_mask((10, 20), (0, 0, 10, 20))  # tall all-white
    out = ops.resize_image(2, mask, 20, 20)
    assert out.mode == "L" and out.size == (20, 20)
    assert np.asarray(out).min() >= 250  # side bands stretched from white edge columns


def test_resize_mode_rejects_unknown():
    with pytest.raises(SDStudioError, match="resize_mode"):
        ops.resize_image(3, _gradient(8, 8), 8, 8)


# ---------------------------------------------------------------- masks


def test_binary_mask_thresholds_and_uses_alpha():
    arr = np.array([[0, 128, 129, 255]], np.uint8)
    assert np.asarray(ops.binary_mask(Image.fromarray(arr, "L"))).tolist() == [[0, 0, 255, 255]]
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[..., 3] = [0, 0, 200, 255]  # paint via alpha channel, RGB black
    out = ops.binary_mask(Image.fromarray(rgba, "RGBA"))
    assert np.asarray(out).tolist() == [[0, 0, 255, 255]]


def test_gaussian_kernel_matches_opencv_formula():
    k = ops.gaussian_kernel(4)
    assert k.size == 2 * int(2.5 * 4 + 0.5) + 1 == 21
    assert k.sum() == pytest.approx(1.0)
    assert np.argmax(k) == 10 and k[0] == pytest.approx(k[-1])
    assert k[10] / k[11] == pytest.approx(np.exp(1 / 32))


def test_blur_mask_separate_axes():
    mask = _rect_mask((40, 40), (15, 15, 25, 25))
    only_x = np.asarray(ops.blur_mask(mask, 4, 0)).astype(int)
    # blur along x only: rows outside the box stay 0, columns beyond the box get a soft edge
    assert only_x[:15].max() == 0 and only_x[25:].max() == 0
    assert 0 < only_x[20, 12] < 255 and only_x[20, 20] > 200
    both = np.asarray(ops.blur_mask(mask, 4, 4)).astype(int)
    assert 0 < both[12, 20] < 255
    assert np.array_equal(np.asarray(ops.blur_mask(mask, 0, 0)), np.asarray(mask))
    # symmetric input -> symmetric output
    assert np.array_equal(both, both[:, ::-1]) and np.array_equal(both, both[::-1, :])


def test_prepare_mask_invert_then_blur():
    mask = _rect_mask((32, 32), (8, 8, 24, 24))
    inv = np.asarray(ops.prepare_mask(mask, invert=True, blur_x=0, blur_y=0))
    assert inv[16, 16] == 0 and inv[0, 0] == 255


def test_overlay_mask_doubles_and_clips():
    arr = np.array([[0, 64, 128, 200]], np.uint8)
    out = np.asarray(ops.overlay_mask(Image.fromarray(arr, "L")))
    assert out.tolist() == [[0, 128, 255, 255]]


def test_latent_mask_shape_and_rounding():
    mask = _rect_mask((32, 16), (0, 0, 16, 16))  # left half
    lm = ops.latent_mask(mask, 8, 16)
    assert lm.shape == (1, 1, 8, 16)
    assert set(torch.unique(lm).tolist()) <= {0.0, 1.0}
    assert lm[0, 0, :, :7].min() == 1 and lm[0, 0, :, 9:].max() == 0


# ---------------------------------------------------------------- crop regions


def test_crop_region_with_padding_and_clamp():
    mask = _rect_mask((64, 64), (10, 20, 30, 40))
    assert ops.crop_region(mask) == (10, 20, 30, 40)
    assert ops.crop_region(mask, 8) == (2, 12, 38, 48)
    assert ops.crop_region(mask, 32) == (0, 0, 62, 64)
    assert ops.crop_region(Image.new("L", (8, 8))) is None


def test_expand_crop_region_a1111_example():
    # A1111's docstring: a 128x32 region processed at 512x512 becomes 128x128
    x1, y1, x2, y2 = ops.expand_crop_region((100, 200, 228, 232), 512, 512, 1024, 1024)
    assert (x2 - x1, y2 - y1) == (128, 128)
    assert (x1, x2) == (100, 228) and (y1 + y2) / 2 == pytest.approx(216, abs=1)


def test_expand_crop_region_slides_inside_image():
    # box at the bottom edge must grow upwards, not past the image
    x1, y1, x2, y2 = ops.expand_crop_region((0, 90, 64, 100), 64, 64, 100, 100)
    assert y2 == 100 and y2 - y1 == 64 and x1 == 0 and x2 == 64
    # wider ratio: box at the left edge grows to the right
    x1, y1, x2, y2 = ops.expand_crop_region((0, 0, 10, 40), 64, 64, 100, 100)
    assert x1 == 0 and x2 - x1 == 40


# ---------------------------------------------------------------- fills and overlay


def test_fill_masked_keeps_outside_and_spreads_colour_inside():
    img = Image.new("RGB", (48, 48), (200, 40, 40))
    arr = np.asarray(img).copy()
    arr[16:32, 16:32] = (0, 0, 255)  # garbage inside the hole
    mask = _rect_mask((48, 48), (16, 16, 32, 32))
    out = np.asarray(ops.fill_masked(Image.fromarray(arr), mask)).astype(int)
    assert np.array_equal(out[:16], arr[:16].astype(int))  # outside untouched
    assert np.abs(out[24, 24] - np.array([200, 40, 40])).max() <= 3  # hole takes surrounding colour


def test_apply_overlay_keeps_unmasked_pixels_exactly():
    original = _gradient(64, 48)
    mask = _rect_mask((64, 48), (20, 10, 40, 30))
    generated = Image.new("RGB", (64, 48), (1, 2, 3))
    out = np.asarray(ops.apply_overlay(generated, ops.make_overlay(original, mask)))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(original)[keep])
    assert (out[~keep] == (1, 2, 3)).all()


def test_apply_overlay_with_paste_loc_only_touches_box():
    original = _gradient(64, 64)
    mask = _rect_mask((64, 64), (24, 24, 32, 32))
    box = (16, 16, 48, 48)
    generated = Image.new("RGB", (128, 128), (9, 9, 9))  # processed at a larger size
    out = np.asarray(ops.apply_overlay(generated, ops.make_overlay(original, mask), (16, 16, 32, 32)))
    changed = np.any(out != np.asarray(original), axis=-1)
    ys, xs = np.nonzero(changed)
    assert changed.any()
    assert xs.min() >= box[0] and xs.max() < box[2] and ys.min() >= box[1] and ys.max() < box[3]
    assert (out[24:32, 24:32] == 9).all()


# ---------------------------------------------------------------- outpaint canvas


def test_extend_canvas_sizes_edges_and_mask():
    img = _gradient(32, 24)
    canvas, mask = ops.extend_canvas(img, left=8, right=16, up=0, down=4, overlap=2, noise=0, seed=1)
    assert canvas.size == (32 + 8 + 16, 24 + 4) == mask.size
    c = np.asarray(canvas)
    assert np.array_equal(c[0:24, 8:40], np.asarray(img))  # original in place
    assert np.array_equal(c[5, 0:8], np.repeat(c[5, 8:9], 8, axis=0))  # edge colour, no noise
    m = np.asarray(mask)
    assert (m[:, :10] == 255).all() and (m[:, 38:] == 255).all() and (m[22:] == 255).all()
    assert (m[0:22, 10:38] == 0).all()  # original kept except 2 px overlap on extended sides


def test_extend_canvas_noise_is_seeded_and_only_in_new_area():
    img = _gradient(16, 16)
    a, _ = ops.extend_canvas(img, right=8, noise=20, seed=3)
    b, _ = ops.extend_canvas(img, right=8, noise=20, seed=3)
    c, _ = ops.extend_canvas(img, right=8, noise=20, seed=4)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    assert np.array_equal(np.asarray(a)[:, :16], np.asarray(img))
    assert np.asarray(a)[:, 16:].astype(int).std() > 5


@pytest.mark.parametrize("kwargs", [{}, {"left": -1}, {"up": 2.5}])
def test_extend_canvas_rejects_bad_sides(kwargs):
    with pytest.raises(SDStudioError):
        ops.extend_canvas(_gradient(8, 8), **kwargs)


# ---------------------------------------------------------------- tensors


def test_tensor_roundtrip_is_exact():
    img = _gradient(12, 8)
    x = ops.images_to_tensor([img, img])
    assert x.shape == (2, 3, 8, 12) and x.min() >= -1 and x.max() <= 1
    back = ops.tensor_to_images(x)
    assert np.array_equal(np.asarray(back[1]), np.asarray(img))


def _a1111_resize_and_fill(im: Image.Image, width: int, height: int) -> Image.Image:
    """A1111 v1.10 images.resize_image, mode 2, with upscaler "None" (reference for parity)."""
    ratio, src_ratio = width / height, im.width / im.height
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=Image.Resampling.LANCZOS)
    res = Image.new("RGB", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio:
        fill = height // 2 - src_h // 2
        if fill > 0:
            res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
            res.paste(resized.resize((width, fill), box=(0, src_h, width, src_h)), box=(0, fill + src_h))
    elif ratio > src_ratio:
        fill = width // 2 - src_w // 2
        if fill > 0:
            res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
            res.paste(resized.resize((fill, height), box=(src_w, 0, src_w, height)), box=(fill + src_w, 0))
    return res


@pytest.mark.parametrize("src,dst", [((100, 40), (64, 64)), ((40, 100), (64, 64)), ((37, 91), (80, 48))])
def test_resize_and_fill_matches_a1111_exactly(src, dst):
    rng = np.random.default_rng(1)
    im = Image.fromarray(rng.integers(0, 255, (src[1], src[0], 3), dtype=np.uint8))
    ours = np.asarray(ops.resize_image(2, im, *dst))
    assert np.array_equal(ours, np.asarray(_a1111_resize_and_fill(im, *dst)))


def _a1111_expand(region, pw, ph, iw, ih):
    """A1111 masking.expand_crop_region, transcribed as the reference."""
    x1, y1, x2, y2 = region
    if (x2 - x1) / (y2 - y1) > pw / ph:
        diff = int((x2 - x1) / (pw / ph) - (y2 - y1))
        y1, y2 = y1 - diff // 2, y2 + diff - diff // 2
        if y2 >= ih:
            y1, y2 = y1 - (y2 - ih), ih
        if y1 < 0:
            y1, y2 = 0, y2 - y1
        y2 = min(y2, ih)
    else:
        diff = int((y2 - y1) * (pw / ph) - (x2 - x1))
        x1, x2 = x1 - diff // 2, x2 + diff - diff // 2
        if x2 >= iw:
            x1, x2 = x1 - (x2 - iw), iw
        if x1 < 0:
            x1, x2 = 0, x2 - x1
        x2 = min(x2, iw)
    return x1, y1, x2, y2


def test_expand_crop_region_matches_a1111_on_random_boxes():
    rng = np.random.default_rng(5)
    for _ in range(500):
        iw, ih = int(rng.integers(64, 300)), int(rng.integers(64, 300))
        x1, y1 = int(rng.integers(0, iw - 1)), int(rng.integers(0, ih - 1))
        box = (x1, y1, int(rng.integers(x1 + 1, iw + 1)), int(rng.integers(y1 + 1, ih + 1)))
        pw, ph = int(rng.integers(8, 128)) * 8, int(rng.integers(8, 128)) * 8
        assert ops.expand_crop_region(box, pw, ph, iw, ih) == _a1111_expand(box, pw, ph, iw, ih)


def test_huge_declared_size_is_a_clear_error():
    """A PNG whose header claims 20000x20000 (PIL raises DecompressionBombError on open)."""
    import struct
    import zlib

    from sdstudio.errors import SDStudioError
    from sdstudio.pipelines.image_ops import load_image

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )
    with pytest.raises(SDStudioError, match="init_images"):
        load_image(png)
