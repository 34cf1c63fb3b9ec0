"""Hires fix pieces: upscaler names, latent/image upscaling, second-pass request, infotext keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.config import GenerationRequest, HiresSettings
from sdstudio.errors import SDStudioError
from sdstudio.pipelines import hires


def test_upscaler_names_are_case_insensitive_and_checked():
    assert hires.check_upscaler("latent (NEAREST)") == "Latent (nearest)"
    assert hires.is_latent_upscaler("Latent") and not hires.is_latent_upscaler("Lanczos")
    with pytest.raises(SDStudioError, match="unknown hires upscaler 'ESRGAN_4x'") as err:
        hires.check_upscaler("ESRGAN_4x")
    assert err.value.field == "hr_upscaler"


def test_latent_upscale_modes():
    z = torch.arange(4.0).view(1, 1, 2, 2)
    nearest = hires.upscale_latents(z, "Latent (nearest)", (4, 4))
    assert nearest.shape == (1, 1, 4, 4)
    assert torch.equal(
        nearest[0, 0], torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3.0]])
    )
    bilinear = hires.upscale_latents(z, "Latent", (4, 4))
    assert bilinear[0, 0, 0, 1] == pytest.approx(0.25)  # interpolated, unlike nearest
    assert hires.upscale_latents(torch.randn(2, 4, 8, 8), "Latent (bicubic antialiased)", (12, 16)).shape == (
        2,
        4,
        12,
        16,
    )


def test_image_upscalers():
    img = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8)).convert("RGB")
    near = np.asarray(hires.upscale_image(img, "Nearest", (4, 4)))[..., 0]
    assert near.tolist() == [[0, 0, 255, 255], [0, 0, 255, 255], [255, 255, 0, 0], [255, 255, 0, 0]]
    assert hires.upscale_image(img, "Lanczos", (6, 4)).size == (6, 4)


def test_second_pass_request_and_infotext():
    hr = HiresSettings(
        scale=1.5,
        upscaler="Latent",
        second_pass_steps=5,
        denoising_strength=0.4,
        sampler="DDIM",
        prompt="sharp",
    )
    req = GenerationRequest(prompt="soft", width=64, height=96, steps=20, sampler_name="Euler a", hires=hr)
    second = hires.second_pass_request(req)
    assert (second.width, second.height, second.steps) == (96, 144, 5)
    assert second.sampler_name == "DDIM" and second.prompt == "sharp" and second.hires is None
    assert second.denoising_strength == 0.4
    assert list(hires.hires_infotext(req).items()) == [
        ("Denoising strength", 0.4),
        ("Hires upscale", 1.5),
        ("Hires steps", 5),
        ("Hires upscaler", "Latent"),
        ("Hires sampler", "DDIM"),
        ("Hires prompt", "sharp"),
    ]
    by_size = req.replace(hires=HiresSettings(resize_x=128, second_pass_steps=0))
    extra = hires.hires_infotext(by_size)
    assert extra["Hires resize"] == "128x0" and "Hires upscale" not in extra and "Hires steps" not in extra
    assert hires.second_pass_request(by_size).steps == 20
    assert (hires.second_pass_request(by_size).width, hires.second_pass_request(by_size).height) == (128, 192)


def test_hires_pass_strength_zero_only_upscales(tiny_sd1):
    from sdstudio.pipelines.components import decode_latents, to_pil

    req = GenerationRequest(
        width=64, height=64, steps=2, hires=HiresSettings(scale=2, denoising_strength=0.0)
    )
    latents = torch.randn(1, 4, 32, 32) * 0.1
    out, images, extra = hires.hires_pass(tiny_sd1, req, latents, [1], [1])
    assert out.shape == (1, 4, 64, 64) and images[0].size == (128, 128)
    expected = to_pil(decode_latents(tiny_sd1, hires.upscale_latents(latents, "Latent", (64, 64))))[0]
    assert np.array_equal(np.asarray(images[0]), np.asarray(expected))
    assert extra["Denoising strength"] == 0.0
