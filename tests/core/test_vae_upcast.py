"""The VAE decode precision follows the VAE's config (diffusers ``force_upcast``) instead of a wasted
fp16 decode, a NaN check and a second decode."""

from __future__ import annotations

import copy

import torch

from sdstudio.pipelines import components


def _fp16_model(tiny_sd1, force_upcast: bool):
    model = copy.deepcopy(tiny_sd1)
    model.vae.register_to_config(force_upcast=force_upcast)
    model.dtype = torch.float16  # only the decode precision is under test: the VAE stays fp32 here
    return model


def test_force_upcast_decodes_in_fp32_once(tiny_sd1, monkeypatch):
    calls = []
    real = components._decode
    monkeypatch.setattr(components, "_decode", lambda m, z, dtype: calls.append(dtype) or real(m, z, dtype))
    latents = torch.zeros(1, 4, 16, 16)
    components.decode_latents(_fp16_model(tiny_sd1, True), latents)
    assert calls == [torch.float32]


def test_other_vaes_keep_the_model_precision(tiny_sd1):
    assert components.decode_dtype(_fp16_model(tiny_sd1, False)) == torch.float16
    assert components.decode_dtype(tiny_sd1) == torch.float32
