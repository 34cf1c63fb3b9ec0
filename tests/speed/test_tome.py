"""Token merging (pipelines/tome.py): exact bookkeeping, off = bit-identical, on = fewer tokens, bounded.

Parity with the reference implementation was checked once by hand (tomesd 0.1.3,
``apply_patch(unet, ratio=0.5, use_rand=False)`` on tiny_sd1, 16x16 and 9x7 latents: max abs
difference 1.7e-6 of UNet outputs that ToMe moved by 0.04-0.08); tomesd is not a dependency.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.pipelines.deepcache import DeepCacheUNet
from sdstudio.pipelines.speed import FAST_TOME_RATIO, SpeedOptions
from sdstudio.pipelines.tome import (
    ToMeUNet,
    bipartite_soft_matching,
    grid_split,
    level_grid,
    self_attention_layers,
    token_merging,
)
from tests.speed.test_fast import REQ, pixels, unet_inputs


def test_grid_split_puts_one_dst_per_whole_2x2_cell_and_the_ragged_edges_in_src():
    src, dst = grid_split(5, 7)  # odd both ways: 2 x 3 whole cells, row 4 and column 6 ragged
    assert dst.tolist() == [r * 7 + c for r in (0, 2) for c in (0, 2, 4)]
    assert sorted(src.tolist() + dst.tolist()) == list(range(35))
    assert level_grid((9, 7), 63) == (9, 7)
    assert level_grid((9, 7), 20) is None  # level 2 is past max_downsample 1
    assert level_grid((9, 7), 20, max_downsample=2) == (5, 4)  # the UNet's stride-2 convs round up


@pytest.mark.parametrize("hw", [(4, 6), (5, 7), (3, 3)])
def test_merge_then_unmerge_with_ratio_0_is_identity(hw):
    x = torch.randn(2, hw[0] * hw[1], 8)
    m = bipartite_soft_matching(x, *hw, r=0)
    assert m.merge(x).shape == x.shape
    assert torch.equal(m.unmerge(m.merge(x)), x)


def test_merge_averages_the_most_similar_src_into_its_dst_and_unmerge_copies_back():
    h, w, n = 5, 7, 35
    x = torch.randn(2, n, 8, dtype=torch.float64)
    r = int(n * 0.5)
    m = bipartite_soft_matching(x, h, w, r)
    merged = m.merge(x)
    assert merged.shape == (2, n - r, 8)
    src, dst = grid_split(h, w)
    unit = torch.nn.functional.normalize(x, dim=-1)
    for b in range(2):  # the reference, token by token
        sim = unit[b, src] @ unit[b, dst].T  # (Ns, Nd)
        best, into = sim.max(dim=1)
        order = best.argsort(descending=True, stable=True)  # most similar first
        moved, kept = order[:r], order[r:]
        want_dst = x[b, dst].clone()
        for d in range(len(dst)):
            group = [x[b, dst[d]]] + [x[b, src[s]] for s in moved if into[s] == d]
            want_dst[d] = torch.stack(group).mean(0)
        torch.testing.assert_close(merged[b, : len(kept)], x[b, src[kept]])
        torch.testing.assert_close(merged[b, len(kept) :], want_dst)
        back = m.unmerge(merged)[b]
        torch.testing.assert_close(back[dst], want_dst)
        torch.testing.assert_close(back[src[moved]], want_dst[into[moved]])
        torch.testing.assert_close(back[src[kept]], x[b, src[kept]])


def unet_out(unet, x, t, ctx):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=ctx, return_dict=False)[0]


def test_ratio_0_is_bit_identical_and_0_5_halves_the_top_level_tokens(tiny_sd1):
    unet = tiny_sd1.unet
    x, t, ctx = unet_inputs(tiny_sd1, size=16)  # 256 top-level tokens
    plain = unet_out(unet, x, t, ctx)
    layers = self_attention_layers(unet)
    # top level: down_blocks.0 (1), up_blocks.1 (2); the mid block (8x8) passes through
    assert len(layers) == 4
    with token_merging(layers, 0.0, (16, 16)) as procs:
        assert torch.equal(unet_out(unet, x, t, ctx), plain)
    assert sorted(p.tokens[0] for p in procs) == [64, 256, 256, 256]
    with token_merging(layers, 0.5, (16, 16)) as procs:
        merged = unet_out(unet, x, t, ctx)
    assert sorted(p.tokens[0] for p in procs) == [64, 128, 128, 128]  # what the layers' own processors got
    err = float((merged - plain).norm() / plain.norm())
    assert 0 < err < 0.05, err  # measured 0.012 on this tiny random model
    off = ToMeUNet(unet, unet, 0.0)(x, t, encoder_hidden_states=ctx, return_dict=False)[0]
    assert torch.equal(off, plain)


def test_odd_latents_and_deeper_levels(tiny_sd1):
    from diffusers import UNet2DConditionModel

    x, t, ctx = unet_inputs(tiny_sd1, size=16)
    x = x[:, :, :9, :7]  # 63 tokens: a ragged row and column
    plain = unet_out(tiny_sd1.unet, x, t, ctx)
    with token_merging(self_attention_layers(tiny_sd1.unet), 0.5, (9, 7)) as procs:
        merged = unet_out(tiny_sd1.unet, x, t, ctx)
    assert sorted(p.tokens[0] for p in procs) == [20, 32, 32, 32]  # 63 - int(31.5); mid block 5x4
    assert merged.shape == plain.shape
    assert float((merged - plain).norm() / plain.norm()) < 0.1
    torch.manual_seed(0)
    deep = UNet2DConditionModel(  # attention on both levels
        sample_size=8, block_out_channels=(16, 32), layers_per_block=1, cross_attention_dim=32,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        attention_head_dim=4, norm_num_groups=8,
    ).eval()  # fmt: skip
    for max_down, level2 in ((1, 20), (2, 10)):  # level 2 is 5x4 = 20 tokens
        with token_merging(self_attention_layers(deep), 0.5, (9, 7), max_downsample=max_down) as procs:
            unet_out(deep, x, t, ctx)
        # half resolution: down_blocks.1, mid, up_blocks.0 (x2); full: down_blocks.0, up_blocks.1 (x2)
        assert sorted(p.tokens[0] for p in procs) == [level2] * 4 + [32] * 3


def test_tome_composes_with_deepcache_shallow_calls(tiny_sd1):
    unet = tiny_sd1.unet
    x, t, ctx = unet_inputs(tiny_sd1, size=16)
    wrapped = SpeedOptions(deepcache_interval=3, tome_ratio=0.5).unet_for(unet)
    assert isinstance(wrapped, ToMeUNet) and isinstance(wrapped.inner, DeepCacheUNet)

    class Compiled:  # another runtime's UNet (OpenVINO): it has no attention processors to wrap
        def matches(self, _unet):
            return True

    assert SpeedOptions(tome_ratio=0.5).unet_for(unet, Compiled()).inner is unet  # ToMe runs on PyTorch
    assert isinstance(SpeedOptions().unet_for(unet, Compiled()), Compiled)
    cache = DeepCacheUNet(unet, interval=2)
    layers = self_attention_layers(unet)
    with torch.no_grad():
        cache(x, t, encoder_hidden_states=ctx, return_dict=False)  # full call
        with token_merging(layers, 0.5, (16, 16)) as procs:
            cache(x, t, encoder_hidden_states=ctx, return_dict=False)  # shallow call
    assert cache.full_calls == 1  # the shallow path ran the top-level blocks only, both merged:
    assert sorted(p.tokens for p in procs) == [[], [128], [128], [128]]


def test_requests_ask_for_tome_and_fast_mode_keeps_the_requested_ratio():
    assert SpeedOptions.from_request(GenerationRequest()).tome_ratio == 0.0
    assert SpeedOptions.from_request(GenerationRequest(token_merging_ratio=0.3)).tome_ratio == 0.3
    assert SpeedOptions.from_request(GenerationRequest(fast=True)).tome_ratio == FAST_TOME_RATIO
    assert SpeedOptions.from_request(GenerationRequest(fast=True, token_merging_ratio=0.3)).tome_ratio == 0.3
    from sdstudio.errors import SDStudioError

    with pytest.raises(SDStudioError, match="token_merging_ratio"):
        GenerationRequest(token_merging_ratio=0.95).validate()


def test_tome_job_reproduces_is_recorded_and_leaves_the_unet_as_it_was(tiny_sd1):
    from sdstudio.infotext import request_from_infotext

    unet = tiny_sd1.unet
    before = dict(unet.attn_processors)
    plain_items = txt2img(tiny_sd1, REQ)
    plain = pixels(plain_items)
    items = txt2img(tiny_sd1, REQ.replace(token_merging_ratio=0.5))
    tome = pixels(items)
    assert not np.array_equal(tome, plain) and float(np.abs(tome - plain).mean()) < 0.05
    assert "Token merging ratio: 0.5" in items[0].infotext and "Token merging" not in plain_items[0].infotext
    again = request_from_infotext(items[0].infotext)
    assert again.token_merging_ratio == 0.5  # the same request, from the infotext: the same pixels
    assert np.array_equal(tome, pixels(txt2img(tiny_sd1, again.replace(width=64, height=64))))
    txt2img(tiny_sd1, again.replace(fast=True))  # with DeepCache
    after = unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unet.modules())
    assert np.array_equal(pixels(txt2img(tiny_sd1, REQ)), plain)  # a later default request: as before
