"""Speed techniques: off by default (the plain path is bit-identical), bounded when on.

DeepCache (pipelines/deepcache.py), A1111's negative guidance minimum sigma (``s_min_uncond``,
sampling/guidance.py), ``fast`` requests, and single files streamed into the target dtype.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.pipelines.deepcache import DeepCacheUNet
from sdstudio.pipelines.speed import SpeedOptions
from sdstudio.sampling.guidance import CFGDenoiser

REQ = GenerationRequest(prompt="a cat", width=64, height=64, steps=6, sampler_name="DPM++ 2M", seed=3)


def pixels(items) -> np.ndarray:
    return np.stack([np.asarray(i.image, dtype=np.float32) / 255 for i in items])


def test_speed_is_off_by_default():
    request = GenerationRequest()
    assert request.fast is False and request.s_min_uncond == 0.0
    assert SpeedOptions.from_request(request).is_default
    unet = object()
    assert SpeedOptions().unet_for(unet) is unet  # the plain UNet, no wrapper
    assert not SpeedOptions().tiny_vae and SpeedOptions.from_request(request.replace(fast=True)).tiny_vae


def test_default_request_equals_explicit_plain_path(tiny_sd1):
    a = pixels(txt2img(tiny_sd1, REQ))
    b = pixels(txt2img(tiny_sd1, REQ.replace(fast=False, s_min_uncond=0.0)))
    assert np.array_equal(a, b)


def unet_inputs(model, batch=2, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    c_in = model.unet.config.in_channels
    x = torch.randn(batch, c_in, size, size, generator=g)
    ctx = torch.randn(batch, 77, model.unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([500.0] * batch), ctx


@pytest.mark.parametrize("name", ["tiny_sd1", "tiny_sd2", "tiny_sdxl", "tiny_inpaint"])
def test_shallow_pass_reproduces_the_full_unet_at_the_cached_step(name, request):
    """Same input and timestep as the cached call: the shallow path must rebuild the full output."""
    model = request.getfixturevalue(name)
    x, t, ctx = unet_inputs(model)
    kwargs = {"encoder_hidden_states": ctx, "return_dict": False}
    if model.family.name == "sdxl":
        cfg = model.unet.config
        pooled = torch.randn(2, cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim)
        kwargs["added_cond_kwargs"] = {
            "text_embeds": pooled,
            "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2),
        }
    cached = DeepCacheUNet(model.unet, interval=2)
    with torch.no_grad():
        full = model.unet(x, t, **kwargs)[0]
        first = cached(x, t, **kwargs)[0]  # full call, caches the deep features
        shallow = cached(x, t, **kwargs)[0]  # shallow call
    assert (cached.calls, cached.full_calls) == (2, 1)
    assert torch.equal(first, full)
    torch.testing.assert_close(shallow, full, rtol=1e-5, atol=1e-5)


def test_deepcache_reuses_only_between_full_calls(tiny_sd1):
    x, t, ctx = unet_inputs(tiny_sd1)
    cached = DeepCacheUNet(tiny_sd1.unet, interval=3)
    with torch.no_grad():
        for _ in range(7):
            cached(x, t, encoder_hidden_states=ctx, return_dict=False)
        assert cached.full_calls == 3  # calls 0, 3, 6
        cached(x[:1], t[:1], encoder_hidden_states=ctx[:1], return_dict=False)  # fewer rows: cache sliced
        assert cached.full_calls == 3
        cached(torch.cat([x, x]), t.repeat(2), encoder_hidden_states=ctx.repeat(2, 1, 1), return_dict=False)
        assert cached.full_calls == 4  # more rows than cached: a full call


class Recorder:
    """A conditional denoiser that records the batch it was called with (x0 = cond value)."""

    def __init__(self):
        self.rows = []

    def __call__(self, x, sigma, cond):
        self.rows.append(x.shape[0])
        return torch.zeros_like(x) + cond.view(-1, 1, 1, 1)


def guided(s_min_uncond, every=False):
    inner = Recorder()
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.5, 0.2, 0.0])
    d = CFGDenoiser(inner, lambda i: torch.tensor([1.0]), lambda i: torch.tensor([0.0]), 7.0, sigmas,
                    torch.cat, s_min_uncond=s_min_uncond, uncond_every_step=every)  # fmt: skip
    x = torch.zeros(1, 4, 2, 2)
    outs = [float(d(x, s.view(1))[0, 0, 0, 0]) for s in sigmas[:-1]]
    return inner.rows, outs


def test_s_min_uncond_skips_the_uncond_pass_on_alternate_calls_below_the_sigma():
    rows, outs = guided(0.0)
    assert rows == [2] * 5 and outs == [7.0] * 5  # 0 + 7 * (1 - 0)
    rows, outs = guided(1.0)  # sigmas 0.5 (call 3, odd: skipped) and 0.2 (call 4, even: guided)
    assert rows == [2, 2, 2, 1, 2] and outs == [7.0, 7.0, 7.0, 1.0, 7.0]
    rows, outs = guided(1.0, every=True)  # "NGMS all steps"
    assert rows == [2, 2, 2, 1, 1] and outs == [7.0, 7.0, 7.0, 1.0, 1.0]


def test_fast_mode_stays_close_to_the_default_path(tiny_sd1):
    req = REQ.replace(steps=12, batch_size=2)
    base = pixels(txt2img(tiny_sd1, req))
    fast = pixels(txt2img(tiny_sd1, req.replace(fast=True)))
    ngms = pixels(txt2img(tiny_sd1, req.replace(s_min_uncond=1.0)))
    for other in (fast, ngms):
        assert not np.array_equal(base, other)  # the technique is on
        assert float(np.abs(base - other).mean()) < 0.05  # bound on the tiny random model (pixels in [0, 1])


def test_fast_and_ngms_are_in_the_infotext_and_reproduce(tiny_sd1):
    from sdstudio.infotext import request_from_infotext

    item = txt2img(tiny_sd1, REQ.replace(fast=True, s_min_uncond=0.5))[0]
    assert "NGMS: 0.5" in item.infotext and "Fast: True" in item.infotext
    again = request_from_infotext(item.infotext)
    assert again.fast is True and again.s_min_uncond == 0.5
    assert np.array_equal(pixels([item]), pixels(txt2img(tiny_sd1, again.replace(width=64, height=64))))


def test_single_file_streams_into_the_target_dtype(tiny_sd1, tmp_path):
    from sdstudio.checkpoints.io import read_checkpoint
    from sdstudio.errors import SDStudioError
    from sdstudio.models.save import save_single_file

    path = save_single_file(tiny_sd1, tmp_path / "m.safetensors")
    plain = read_checkpoint(path).state_dict
    for dtype in (torch.float32, torch.bfloat16):
        streamed = read_checkpoint(path, dtype).state_dict
        assert list(streamed) == list(plain)
        for key, value in plain.items():
            want = value.to(dtype) if value.is_floating_point() else value
            assert streamed[key].dtype == want.dtype and torch.equal(streamed[key], want), key
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(SDStudioError):
        read_checkpoint(cut, torch.bfloat16)
