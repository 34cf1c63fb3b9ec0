"""img2img / inpaint / outpaint / hires on tiny random-weight models, through the shared sampling loop."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.config import GenerationRequest, HiresSettings
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import image_ops as ops
from sdstudio.pipelines import img2img, outpaint
from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil

BASE = GenerationRequest(
    prompt="a red cube",
    width=64,
    height=64,
    steps=4,
    cfg_scale=1.0,
    sampler_name="Euler",
    seed=7,
    mask_blur=0,
)


@pytest.fixture(scope="module")
def init_image() -> Image.Image:
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:64, 0:64]
    arr = np.stack([x * 4, y * 4, 128 + 0 * x], -1) + rng.integers(-20, 20, (64, 64, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def _mask(box, size=(64, 64)) -> Image.Image:
    arr = np.zeros((size[1], size[0]), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr, "L")


class RecordingUNet(torch.nn.Module):
    """Wraps a UNet and records every input it is called with (no patching of the wrapped module)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    @property
    def config(self):
        return self.inner.config

    def forward(self, sample, timestep, **kwargs):
        self.inputs.append(sample.detach().clone())
        return self.inner(sample, timestep, **kwargs)


def _recording(model):
    return dataclasses.replace(model, unet=RecordingUNet(model.unet))


# ---------------------------------------------------------------- img2img


def test_strength_zero_returns_reencoded_input(tiny_sd1, init_image):
    out = img2img(tiny_sd1, BASE.replace(denoising_strength=0.0), [init_image])
    expected = to_pil(decode_latents(tiny_sd1, encode_images(tiny_sd1, from_pil([init_image]))))[0]
    diff = np.abs(np.asarray(out[0].image).astype(int) - np.asarray(expected).astype(int))
    assert diff.max() <= 1
    assert "Denoising strength: 0," in out[0].infotext


def test_strength_runs_a1111_step_count_and_changes_image(tiny_sd1, init_image):
    infos = []
    req = BASE.replace(steps=6, denoising_strength=0.5)
    out = img2img(tiny_sd1, req, [init_image], progress=infos.append)
    # A1111: t_enc = int(0.5 * 6) = 3, so 4 steps run
    assert [i.step for i in infos] == [1, 2, 3, 4] and infos[-1].steps == 4 and infos[-1].job_steps == 4
    still = img2img(tiny_sd1, req.replace(denoising_strength=0.0), [init_image])[0].image
    assert np.abs(np.asarray(out[0].image).astype(int) - np.asarray(still).astype(int)).mean() > 1
    text = out[0].infotext
    assert "Steps: 6," in text and "Denoising strength: 0.5," in text
    assert f"Init image hash: {ops.image_hash(init_image)}" in text


def test_one_init_image_serves_the_batch_with_consecutive_seeds(tiny_sd1, init_image):
    out = img2img(tiny_sd1, BASE.replace(batch_size=2, steps=2, denoising_strength=0.5), [init_image])
    assert [g.seed for g in out] == [7, 8] and [g.index for g in out] == [0, 1]
    assert not np.array_equal(np.asarray(out[0].image), np.asarray(out[1].image))


def test_resize_mode_sets_output_size(tiny_sd1):
    wide = Image.new("RGB", (200, 50), (10, 200, 30))
    out = img2img(tiny_sd1, BASE.replace(width=64, height=128, resize_mode=1, denoising_strength=0.0), [wide])
    assert out[0].image.size == (64, 128)


# ---------------------------------------------------------------- inpainting


def test_pixels_outside_hard_mask_are_unchanged(tiny_sd1, init_image):
    mask = _mask((16, 16, 48, 40))
    out = img2img(tiny_sd1, BASE.replace(denoising_strength=0.8), [init_image], mask)[0]
    result, src = np.asarray(out.image), np.asarray(init_image)
    keep = np.asarray(mask) == 0
    assert np.array_equal(result[keep], src[keep])
    assert np.abs(result[~keep].astype(int) - src[~keep].astype(int)).mean() > 1
    assert "Mask blur: 0" in out.infotext


def test_only_masked_touches_only_the_padded_box(tiny_sd1, init_image):
    mask = _mask((40, 40, 48, 52))
    req = BASE.replace(denoising_strength=0.9, mask_blur=2, inpaint_full_res=True, inpaint_full_res_padding=4)
    out = img2img(tiny_sd1, req, [init_image], mask)[0]
    changed = np.any(np.asarray(out.image) != np.asarray(init_image), axis=-1)
    work = ops.prepare_mask(mask, blur_x=2, blur_y=2)
    x1, y1, x2, y2 = ops.expand_crop_region(ops.crop_region(work, 4), 64, 64, 64, 64)
    ys, xs = np.nonzero(changed)
    assert changed.sum() > 20
    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2
    assert (x2 - x1, y2 - y1) != (64, 64)  # really a crop, not the whole picture
    assert "Inpaint area: Only masked" in out.infotext and "Masked area padding: 4" in out.infotext


def test_latent_fill_modes_replace_masked_init_latents(tiny_sd1, init_image):
    """First UNet input = (init_latent + noise * sigma) * c_in; fills change init_latent under the mask only."""
    from sdstudio.sampling.noise import ImageNoise

    mask = _mask((8, 8, 40, 40))
    req = BASE.replace(denoising_strength=1.0, steps=1)
    first = {}
    for fill in (1, 2, 3):
        model = _recording(tiny_sd1)
        out = img2img(model, req.replace(inpainting_fill=fill), [init_image], mask)[0]
        first[fill] = model.unet.inputs[0]
        if fill != 1:
            assert f"Masked content: {ops.INPAINTING_FILL[fill]}" in out.infotext
    nmask = ops.latent_mask(ops.prepare_mask(mask, blur_x=0), 32, 32)  # (1, 1, 32, 32)
    init = encode_images(tiny_sd1, from_pil([init_image]))
    noise = ImageNoise((4, 32, 32), [7]).initial()
    nothing = first[1] - first[3]  # = nmask * init * c_in
    c_in = float((nothing * init).sum() / (init * init * nmask).sum())
    assert 0 < c_in < 1
    assert torch.allclose(nothing, nmask * init * c_in, atol=1e-5)
    assert torch.allclose(first[2] - first[3], nmask * noise * c_in, atol=1e-4)


def test_nine_channel_checkpoint_gets_mask_and_masked_image(tiny_inpaint, init_image):
    model = _recording(tiny_inpaint)
    mask = _mask((16, 16, 48, 48))
    out = img2img(model, BASE.replace(denoising_strength=1.0, steps=2), [init_image], mask)[0]
    seen = model.unet.inputs
    assert len(seen) == 2 and all(x.shape == (1, 9, 32, 32) for x in seen)
    expected_mask = torch.zeros(32, 32)
    expected_mask[8:24, 8:24] = 1  # vae scale factor 2
    assert torch.equal(seen[0][0, 4], expected_mask)
    masked = from_pil([init_image]) * (1 - torch.from_numpy(np.asarray(mask) / 255.0).float())[None, None]
    masked = (
        masked + 0.5 * torch.from_numpy(np.asarray(mask) / 255.0).float()[None, None]
    )  # 0 in [-1, 1] = grey
    assert torch.allclose(seen[0][:, 5:], encode_images(tiny_inpaint, masked), atol=1e-4)
    keep = np.asarray(mask) == 0
    assert np.array_equal(np.asarray(out.image)[keep], np.asarray(init_image)[keep])


def test_normal_checkpoint_gets_four_channels(tiny_sd1, init_image):
    model = _recording(tiny_sd1)
    img2img(model, BASE.replace(denoising_strength=0.5, steps=2), [init_image], _mask((0, 0, 32, 32)))
    assert model.unet.inputs and all(x.shape[1] == 4 for x in model.unet.inputs)


# ---------------------------------------------------------------- outpainting and hires


def test_outpaint_output_is_input_plus_extension(tiny_sd1, init_image):
    out = outpaint(tiny_sd1, BASE.replace(denoising_strength=0.8, steps=2), init_image, left=16, down=8)[0]
    assert out.image.size == (64 + 16, 64 + 8)
    result = np.asarray(out.image)
    # the original area away from the seam (overlap = 2 * mask_blur = 0 here) is kept exactly
    assert np.array_equal(result[0:64, 16:80], np.asarray(init_image))
    assert "Outpaint" in out.infotext


def test_outpaint_odd_extension_keeps_exact_size(tiny_sd1, init_image):
    out = outpaint(tiny_sd1, BASE.replace(denoising_strength=0.8, steps=2), init_image, right=5, up=3)[0]
    assert out.image.size == (69, 67)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos"])
def test_hires_output_is_first_pass_times_scale(tiny_sd1, upscaler):
    from sdstudio.pipelines import txt2img

    infos = []
    hires = HiresSettings(scale=1.5, upscaler=upscaler, second_pass_steps=2, denoising_strength=0.5)
    out = txt2img(tiny_sd1, BASE.replace(steps=2, hires=hires), progress=infos.append)[0]
    assert out.image.size == (96, 96)
    assert infos[-1].job_steps == 4 and infos[-1].job_step == 4  # 2 first-pass + 2 second-pass steps
    for key in (
        "Denoising strength: 0.5",
        "Hires upscale: 1.5",
        "Hires steps: 2",
        f"Hires upscaler: {upscaler}",
    ):
        assert key in out.infotext
    assert "Size: 64x64" in out.infotext  # A1111 records the first-pass size


# ---------------------------------------------------------------- bad input


def test_bad_inputs_give_clear_errors(tiny_sd1, init_image):
    with pytest.raises(SDStudioError, match="must be the same size"):
        img2img(tiny_sd1, BASE, [init_image], Image.new("L", (32, 32), 255))
    with pytest.raises(SDStudioError, match="empty"):
        img2img(tiny_sd1, BASE, [init_image], Image.new("L", (64, 64), 0))
    with pytest.raises(SDStudioError, match="not a readable image") as err:
        img2img(tiny_sd1, BASE, [b"definitely not a png"])
    assert err.value.field == "init_images"
    with pytest.raises(SDStudioError, match=r"\[0, 1\]") as err:
        img2img(tiny_sd1, BASE.replace(denoising_strength=1.5), [init_image])
    assert err.value.field == "denoising_strength"
    with pytest.raises(SDStudioError, match="batch_size=2"):
        img2img(tiny_sd1, BASE.replace(batch_size=2), [init_image] * 3)


def test_png_bytes_are_accepted(tiny_sd1, init_image):
    buf = io.BytesIO()
    init_image.save(buf, format="PNG")
    out = img2img(tiny_sd1, BASE.replace(denoising_strength=0.0), [buf.getvalue()])
    assert out[0].image.size == (64, 64)


def test_variation_seed_changes_img2img_output(tiny_sd1, init_image):
    req = BASE.replace(denoising_strength=0.7, steps=2, subseed=99)
    plain = np.asarray(img2img(tiny_sd1, req, [init_image])[0].image).astype(int)
    again = np.asarray(img2img(tiny_sd1, req.replace(subseed=5), [init_image])[0].image).astype(int)
    assert np.array_equal(plain, again)  # subseed_strength 0: the subseed is ignored
    varied = img2img(tiny_sd1, req.replace(subseed_strength=0.5), [init_image])[0]
    assert np.abs(np.asarray(varied.image).astype(int) - plain).mean() > 0.5
    assert "Variation seed: 99" in varied.infotext and "Variation seed strength: 0.5" in varied.infotext


def test_sdxl_img2img_runs(tiny_sdxl, init_image):
    out = img2img(tiny_sdxl, BASE.replace(denoising_strength=0.5, steps=2, cfg_scale=3.0), [init_image])
    assert out[0].image.size == (64, 64)


def test_interrupt_keeps_finished_batches_only(tiny_sd1, init_image):
    from sdstudio.sampling.control import CancelToken

    cancel = CancelToken()
    seen = []

    def progress(info):
        seen.append(info.batch_index)
        cancel.interrupt()  # interrupt during the first batch's first step

    out = img2img(
        tiny_sd1,
        BASE.replace(denoising_strength=0.7, n_iter=3),
        [init_image],
        progress=progress,
        cancel=cancel,
    )
    assert [g.index for g in out] == [0] and seen == [0]  # A1111: the interrupted batch is still returned


def test_hires_on_nine_channel_checkpoint_feeds_nine_channels(tiny_inpaint):
    from sdstudio.pipelines import txt2img

    model = _recording(tiny_inpaint)
    hires = HiresSettings(scale=1.5, upscaler="Latent", second_pass_steps=1, denoising_strength=0.5)
    out = txt2img(model, BASE.replace(steps=1, hires=hires))[0]
    shapes = [tuple(x.shape) for x in model.unet.inputs]
    assert shapes == [(1, 9, 32, 32), (1, 9, 48, 48)]  # first pass, then the upscaled second pass
    assert (model.unet.inputs[1][:, 4] == 1).all()  # txt2img conditioning: everything masked
    assert out.image.size == (96, 96)
