"""The image-to-image family on a CUDA device (skipped without one): placement, dtypes, CPU parity.

Noise is drawn on the CPU (A1111 "RNG: CPU"), so a seed must give nearly the same image on the
GPU in fp32 as on the CPU; fp16 must run and keep the unmasked pixels exact.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.config import GenerationRequest, HiresSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BASE = GenerationRequest(
    prompt="a red cube",
    width=64,
    height=64,
    steps=3,
    cfg_scale=3.0,
    sampler_name="Euler",
    seed=3,
    mask_blur=2,
)


def _image() -> Image.Image:
    y, x = np.mgrid[0:64, 0:64]
    return Image.fromarray(np.stack([x * 4, y * 4, 255 - x * 2], -1).astype(np.uint8))


def _mask() -> Image.Image:
    arr = np.zeros((64, 64), np.uint8)
    arr[16:40, 20:44] = 255
    return Image.fromarray(arr)


def _models(dtype):
    from sdstudio.models.tiny import tiny_sd1

    return {
        "sd1": tiny_sd1().to("cuda", dtype),
        "inpaint": tiny_sd1(inpainting=True).to("cuda", dtype),
    }


def _runs(models):
    """Every mode once; returns {name: PIL image}."""
    from sdstudio.pipelines import img2img, outpaint, txt2img

    img, mask = _image(), _mask()
    req = BASE.replace(denoising_strength=0.6)
    hires = HiresSettings(scale=1.5, second_pass_steps=2, denoising_strength=0.5)
    return {
        "img2img": img2img(models["sd1"], req, [img])[0].image,
        "inpaint": img2img(models["sd1"], req.replace(inpainting_fill=2), [img], mask)[0].image,
        "only_masked": img2img(models["sd1"], req.replace(inpaint_full_res=True), [img], mask)[0].image,
        "inpaint9": img2img(models["inpaint"], req, [img], mask)[0].image,
        "outpaint": outpaint(models["sd1"], req, img, left=8, down=16)[0].image,
        "hires_latent": txt2img(models["sd1"], BASE.replace(hires=hires))[0].image,
        "hires_lanczos": txt2img(models["sd1"], BASE.replace(hires=replace(hires, upscaler="Lanczos")))[
            0
        ].image,
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_all_modes_run_on_cuda_and_keep_unmasked_pixels(dtype):
    out = _runs(_models(dtype))
    assert out["outpaint"].size == (72, 80) and out["hires_latent"].size == (96, 96)
    keep = _outside_blurred_mask()
    for name in ("inpaint", "inpaint9", "only_masked"):
        assert np.array_equal(np.asarray(out[name])[keep], np.asarray(_image())[keep]), name


def _outside_blurred_mask() -> np.ndarray:
    from sdstudio.pipelines import image_ops as ops

    return np.asarray(ops.overlay_mask(ops.prepare_mask(_mask(), blur_x=2, blur_y=2))) == 0


def test_cuda_fp32_matches_cpu():
    from sdstudio.models.tiny import tiny_sd1

    cpu = _runs({"sd1": tiny_sd1(), "inpaint": tiny_sd1(inpainting=True)})
    gpu = _runs(_models(torch.float32))
    for name in cpu:
        diff = np.abs(np.asarray(cpu[name]).astype(int) - np.asarray(gpu[name]).astype(int))
        assert diff.mean() < 1.0 and diff.max() <= 16, (name, diff.mean(), diff.max())
