"""Model-free parts of img2img/inpaint: A1111 step rule, mask/crop preparation, latent fills, blending."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines import inpaint, plan
from sdstudio.pipelines.plan import img2img_schedule


def _gradient(w, h):
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x * 7 + y * 13) % 256], -1)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _rect_mask(size, box):
    arr = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr, "L")


# ---------------------------------------------------------------- A1111 step rule


@pytest.mark.parametrize(
    "steps,strength,expected_run",
    [(20, 0.5, 11), (20, 0.75, 16), (20, 1.0, 20), (20, 0.01, 1), (10, 0.3, 4), (50, 0.999, 50)],
)
def test_schedule_runs_t_enc_plus_one_steps(steps, strength, expected_run):
    total, start = img2img_schedule(steps, strength)
    assert total == steps
    assert total - start == int(min(strength, 0.999) * steps) + 1 == expected_run


@pytest.mark.parametrize("steps,strength", [(20, 0.5), (7, 0.3), (30, 1.0), (4, 0.7)])
def test_schedule_fix_steps_runs_exactly_steps(steps, strength):
    total, start = img2img_schedule(steps, strength, fix_steps=True)
    assert total == int(steps / min(strength, 0.999))
    assert total - start == steps


# ---------------------------------------------------------------- preparation


def test_prepare_without_mask_resizes_only():
    req = GenerationRequest(width=32, height=16, resize_mode=1)
    prep = inpaint.prepare_inputs(req, [_gradient(64, 64)])
    assert [im.size for im in prep.images] == [(32, 16)]
    assert prep.mask is None and prep.overlays == [] and prep.paste_loc is None


def test_prepare_whole_picture_mask_overlay_keeps_outside():
    img = _gradient(64, 64)
    mask = _rect_mask((64, 64), (16, 16, 48, 48))
    req = GenerationRequest(width=64, height=64, mask_blur=2, inpainting_fill=1)
    prep = inpaint.prepare_inputs(req, [img], mask)
    assert prep.paste_loc is None and prep.mask.size == (64, 64)
    assert prep.extra == {"Mask blur": 2}
    alpha = np.asarray(prep.overlays[0])[..., 3]
    assert alpha[0, 0] == 255 and alpha[32, 32] == 0
    # fill 1 ("original") keeps the pixels the VAE sees
    assert np.array_equal(np.asarray(prep.images[0]), np.asarray(img))


def test_prepare_fill_mode_replaces_masked_pixels():
    arr = np.full((64, 64, 3), (30, 160, 90), np.uint8)
    arr[16:48, 16:48] = (250, 0, 250)  # content under the mask must not survive "fill"
    img = Image.fromarray(arr)
    mask = _rect_mask((64, 64), (16, 16, 48, 48))
    req = GenerationRequest(width=64, height=64, mask_blur=0, inpainting_fill=0)
    prep = inpaint.prepare_inputs(req, [img], mask)
    out = np.asarray(prep.images[0]).astype(int)
    assert np.array_equal(out[:16], arr[:16].astype(int))
    assert np.abs(out[32, 32] - (30, 160, 90)).max() <= 3
    assert prep.extra["Masked content"] == "fill"


def test_prepare_only_masked_crops_padded_box_at_full_res():
    img = _gradient(128, 128)
    mask = _rect_mask((128, 128), (60, 60, 68, 76))  # 8x16 box
    req = GenerationRequest(
        width=64, height=64, mask_blur=0, inpaint_full_res=True, inpaint_full_res_padding=8
    )
    prep = inpaint.prepare_inputs(req, [img], mask)
    x, y, w, h = prep.paste_loc
    # bbox + 8 px = (52, 52, 76, 84): 24x32, grown to 1:1 -> 32x32
    assert (w, h) == (32, 32) and (y, y + h) == (52, 84) and x <= 52 and x + w >= 76
    assert prep.images[0].size == (64, 64) and prep.mask.size == (64, 64)
    # the crop (upscaled 2x) shows the source's box, not the whole image
    expected = np.asarray(img.crop((x, y, x + w, y + h)).resize((64, 64), ops.LANCZOS)).astype(int)
    assert np.abs(np.asarray(prep.images[0]).astype(int) - expected).max() <= 2
    assert prep.overlays[0].size == (128, 128)
    assert prep.extra["Inpaint area"] == "Only masked" and prep.extra["Masked area padding"] == 8


def test_prepare_rejects_bad_masks():
    img = _gradient(32, 32)
    req = GenerationRequest(width=32, height=32)
    with pytest.raises(SDStudioError, match="same size"):
        inpaint.prepare_inputs(req, [img], Image.new("L", (16, 16), 255))
    with pytest.raises(SDStudioError, match="empty"):
        inpaint.prepare_inputs(req, [img], Image.new("L", (32, 32), 0))
    with pytest.raises(SDStudioError, match="non-negative") as err:
        only = req.replace(inpaint_full_res=True, inpaint_full_res_padding=-4)
        inpaint.prepare_inputs(only, [img], _rect_mask((32, 32), (4, 4, 8, 8)))
    assert err.value.field == "inpaint_full_res_padding"
    with pytest.raises(SDStudioError, match="after inverting"):
        inpaint.prepare_inputs(req.replace(inpainting_mask_invert=True), [img], Image.new("L", (32, 32), 255))


def test_paste_back_restores_original_outside_hard_mask():
    img = _gradient(64, 48)
    mask = _rect_mask((64, 48), (8, 8, 24, 40))
    req = GenerationRequest(width=64, height=48, mask_blur=0)
    prep = inpaint.prepare_inputs(req, [img], mask)
    out = np.asarray(inpaint.paste_back(Image.new("RGB", (64, 48), (0, 0, 0)), prep, 0))
    keep = np.asarray(mask) == 0
    assert np.array_equal(out[keep], np.asarray(img)[keep])
    assert (out[~keep] == 0).all()


# ---------------------------------------------------------------- latent-space pieces


def test_fill_latents_modes():
    init = torch.ones(1, 4, 4, 4)
    nmask = torch.zeros(1, 1, 4, 4)
    nmask[..., :2, :] = 1
    noise = torch.full_like(init, 5.0)
    assert torch.equal(inpaint.fill_latents(init, nmask, 1, noise), init)
    nothing = inpaint.fill_latents(init, nmask, 3, noise)
    assert nothing[..., :2, :].abs().max() == 0 and torch.equal(nothing[..., 2:, :], init[..., 2:, :])
    noised = inpaint.fill_latents(init, nmask, 2, noise)
    assert (noised[..., :2, :] == 5).all() and (noised[..., 2:, :] == 1).all()


def test_denoised_blend_resets_unmasked_area_to_original():
    init = torch.randn(1, 4, 4, 4)
    nmask = torch.zeros(1, 1, 4, 4)
    nmask[..., 1:3, 1:3] = 1
    blend = inpaint.denoised_blend(init, nmask)
    out = blend(torch.full((2, 4, 4, 4), 7.0), torch.tensor([2.0, 2.0]))
    assert out.shape == (2, 4, 4, 4)
    assert torch.equal(out[:, :, 0, :], init[:, :, 0, :].expand(2, -1, -1))
    assert (out[..., 1:3, 1:3] == 7).all()


def test_image_conditioning_layout_and_masking():
    src = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1

    def encode(x):  # a fake VAE: 4x4 average pool into 4 channels
        return torch.nn.functional.avg_pool2d(x, 4).repeat(1, 2, 1, 1)[:, :4]

    cond = plan.image_conditioning(encode, src, mask, (4, 4))
    assert cond.shape == (2, 5, 4, 4)
    assert (cond[:, 0, :, :2] == 1).all() and (cond[:, 0, :, 2:] == 0).all()
    assert cond[:, 1:, :, :2].abs().max() == 0  # masked area blanked before encoding
    full = plan.image_conditioning(encode, src, None, (4, 4))
    assert (full[:, 0] == 1).all() and full[:, 1:].abs().max() == 0
