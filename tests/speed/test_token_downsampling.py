"""Token downsampling (ToDo, Smith et al. 2024) of the full-resolution self-attention: fast mode only.

Off by default and below ``TODO_MIN_TOKENS`` (a default job and a small fast job sample as before);
when it applies, the full-resolution self-attentions see keys/values of every 2nd token, the UNet is
left unchanged after every call, and the OpenVINO graph traced with it downsamples at any size.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.families.sd.token_downsampling import (
    ToDoUNet,
    downsample_tokens,
    full_resolution_transformers,
    token_downsampling,
)
from sdstudio.models.tiny import tiny_sd1
from sdstudio.pipelines import speed
from sdstudio.pipelines.speed import SpeedOptions

FAST = GenerationRequest(
    prompt="a cat", width=64, height=64, steps=6, sampler_name="DPM++ 2M", seed=5, fast=True
)


def unet_inputs(unet, h: int, w: int, batch: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, unet.config.in_channels, h, w, generator=g)  # (B, C, h, w)
    ctx = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)  # (B, 77, D)
    return x, torch.tensor([400.0] * batch), ctx


def test_downsample_keeps_the_top_left_token_of_every_cell():
    grid = torch.arange(5 * 6, dtype=torch.float32).reshape(1, 30, 1)  # tokens 0..29 on a 5 x 6 grid
    kept = downsample_tokens(grid, (5, 6), 2).flatten().tolist()
    assert kept == [0, 2, 4, 12, 14, 16, 24, 26, 28]  # rows 0, 2, 4; columns 0, 2, 4 (a ragged last row)


def test_off_by_default_and_below_the_token_threshold():
    assert SpeedOptions().todo_factor == 1 and SpeedOptions().todo_at((512, 512)) == 1
    fast = SpeedOptions.from_request(FAST)
    assert fast.todo_factor == speed.FAST_TODO_FACTOR == 2
    assert fast.todo_at((32, 32)) == 1  # 1024 tokens: SD 1.5 at 256 px
    assert fast.todo_at((64, 64)) == 2 and fast.todo_at((48, 96)) == 2  # 4096 + tokens: 512 px and up


def test_attention_sees_a_quarter_of_the_keys_and_the_unet_is_restored():
    unet = tiny_sd1().unet
    before = dict(unet.attn_processors)
    x, t, ctx = unet_inputs(unet, 8, 6)
    with torch.no_grad():
        plain = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
        with token_downsampling(unet, 2) as procs:
            down = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert len(procs) == sum(len(m.transformer_blocks) for m in full_resolution_transformers(unet)) > 0
    assert all(p.tokens == [4 * 3] for p in procs)  # 8 x 6 latent grid -> 4 x 3 keys, once per call
    assert unet.attn_processors == before  # every processor put back
    assert not any(m._forward_pre_hooks for m in full_resolution_transformers(unet))
    rel = ((down - plain).norm() / plain.norm()).item()
    assert 0 < rel < 0.5  # changed (keys were dropped), not broken
    with torch.no_grad():  # and the restored UNet is the plain one again
        assert torch.equal(unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0], plain)


def test_the_wrapper_restores_the_unet_even_when_the_call_raises():
    unet = tiny_sd1().unet
    before = dict(unet.attn_processors)

    def boom(*_a, **_k):
        raise RuntimeError("sampler stopped")

    with pytest.raises(RuntimeError):
        ToDoUNet(boom, unet, 2)(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]))
    assert unet.attn_processors == before


def test_fast_mode_on_pytorch_downsamples_only_from_the_threshold(monkeypatch):
    model = tiny_sd1()  # no OpenVINO: fast mode's ToDo is the per-call wrapper
    small = np.asarray(txt2img(model, FAST)[0].image)
    monkeypatch.setattr(speed, "FAST_INT8", False)
    monkeypatch.setattr(speed, "TODO_MIN_TOKENS", 64)  # the 64 px job's 8 x 8 latents qualify
    assert SpeedOptions.from_request(FAST).todo_at((8, 8)) == 2
    down = np.asarray(txt2img(model, FAST)[0].image)
    again = np.asarray(txt2img(model, FAST)[0].image)
    monkeypatch.setattr(speed, "TODO_MIN_TOKENS", 10**6)
    assert np.array_equal(np.asarray(txt2img(model, FAST)[0].image), small)  # below it: unchanged
    assert np.array_equal(down, again)  # same request, same pixels
    diff = np.abs(down.astype(int) - small.astype(int))
    assert diff.max() > 0 and diff.mean() < 24  # a change within a bound (random tiny model)


def test_a_graph_traced_with_todo_downsamples_at_other_sizes_on_openvino(tmp_path):
    pytest.importorskip("openvino")
    from sdstudio.backends.openvino import _UNetGraph, convert_module

    unet = tiny_sd1().unet
    example = unet_inputs(unet, 8, 8)
    shapes = [[-1, unet.config.in_channels, -1, -1], [-1], [-1, -1, unet.config.cross_attention_dim]]
    with token_downsampling(unet, 2):
        graph = convert_module(_UNetGraph(unet, torch.float32), example, shapes)
    import openvino as ov

    compiled = ov.Core().compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x, t, ctx = unet_inputs(unet, 12, 10, batch=1, seed=3)  # another size and batch than traced
    with torch.no_grad(), token_downsampling(unet, 2):
        want = unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    got = torch.from_numpy(compiled([x.numpy(), t.numpy(), ctx.numpy()])[0])
    assert got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < 1e-3
