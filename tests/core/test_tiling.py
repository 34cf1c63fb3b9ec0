"""Seamless tiling: with circular padding the model commutes with circular shifts."""

from __future__ import annotations

import numpy as np
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.pipelines.components import ModelDenoiser
from sdstudio.pipelines.plan import encode_for_batch
from sdstudio.pipelines.tiling import seamless_tiling


def _denoise(model, x):
    request = GenerationRequest(prompt="a tile", width=32, height=32)
    cond = encode_for_batch(model, request, 1, 32, 32).cond
    sigma = torch.tensor([3.0])
    return ModelDenoiser(model)(x, sigma, cond)  # the family's model sampling (model.sampling)


def test_tiled_model_is_equivariant_to_circular_shifts(tiny_sd1):
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    shift = 2  # multiple of the UNet's total downsampling (one 2x step in the tiny model)
    with seamless_tiling(tiny_sd1):
        tiled = _denoise(tiny_sd1, x)
        tiled_shifted = _denoise(tiny_sd1, torch.roll(x, shift, dims=3))
    assert torch.allclose(torch.roll(tiled, shift, dims=3), tiled_shifted, atol=1e-4)
    plain = _denoise(tiny_sd1, x)
    plain_shifted = _denoise(tiny_sd1, torch.roll(x, shift, dims=3))
    assert not torch.allclose(torch.roll(plain, shift, dims=3), plain_shifted, atol=1e-3)


def test_tiling_is_restored_and_recorded(tiny_sd1):
    request = GenerationRequest(prompt="a tile", width=32, height=32, steps=2, seed=5, sampler_name="Euler")
    plain = txt2img(tiny_sd1, request)[0]
    tiled = txt2img(tiny_sd1, request.replace(tiling=True))[0]
    assert "Tiling: True" in tiled.infotext and "Tiling" not in plain.infotext
    assert not np.array_equal(np.asarray(plain.image), np.asarray(tiled.image))
    assert all(m.padding_mode == "zeros" for m in tiny_sd1.unet.modules() if isinstance(m, torch.nn.Conv2d))
    again = txt2img(tiny_sd1, request)[0]
    assert np.array_equal(np.asarray(plain.image), np.asarray(again.image))
