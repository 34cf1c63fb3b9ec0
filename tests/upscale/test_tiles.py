"""Tiled upscaling: parity with the untiled forward, the tile-size bound, progress, blending."""

from __future__ import annotations

import pytest
import torch

from sdstudio.upscale.load import upscaler_from_state_dict
from sdstudio.upscale.tiles import tile_starts, upscale_tiled
from tests.upscale.conftest import BUILDERS


def _loaded(arch: str, scale: int = 2):
    net = BUILDERS[arch](scale=scale)
    return net, upscaler_from_state_dict(net.state_dict())


@pytest.mark.parametrize("arch,tile,overlap", [("Compact", 24, 16), ("Compact", 32, 20), ("ESRGAN", 100, 88)])
def test_tiled_equals_the_reference_forward_where_the_receptive_field_fits_the_margin(arch, tile, overlap):
    net, up = _loaded(arch)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, 130, 150, generator=g) if arch == "ESRGAN" else torch.rand(1, 3, 50, 70, generator=g)
    with torch.inference_mode():
        ref = net(x).clamp(0, 1)  # spandrel's model, whole image at once
    out = upscale_tiled(up.model, x, up.scale, tile=tile, overlap=overlap)
    assert len(tile_starts(x.shape[2], tile, overlap)) > 1  # really tiled
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_without_enough_overlap_the_seams_differ():
    """The parity above is not vacuous: with no overlap the tile borders change the result."""
    net, up = _loaded("ESRGAN")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref = net(x).clamp(0, 1)
    out = upscale_tiled(up.model, x, up.scale, tile=32, overlap=0)
    assert (out - ref).abs().max() > 1e-3


def test_swinir_tiled_stays_close_to_untiled():
    """Window attention is not shift-equivariant, so tiles start on multiples of the window size;
    the blended result stays within 2/255 of the untiled one for a tiny random SwinIR."""
    _, up = _loaded("SwinIR")
    x = torch.rand(1, 3, 48, 64, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = up.model(x)
    out = upscale_tiled(up.model, x, up.scale, tile=32, overlap=16, multiple_of=up.multiple_of)
    assert out.shape == ref.shape == (1, 3, 96, 128)
    assert (out - ref).abs().max() < 2 / 255


def test_the_model_never_sees_more_than_one_tile_and_progress_counts_every_tile():
    _, up = _loaded("Compact")
    seen, calls = [], []

    def model(t):
        seen.append(tuple(t.shape[2:]))
        return up.model(t)

    x = torch.rand(1, 3, 100, 90)
    out = upscale_tiled(model, x, 2, tile=40, overlap=16, progress=lambda d, n: calls.append((d, n)))
    assert out.shape == (1, 3, 200, 180)
    assert max(h for h, _ in seen) <= 40 and max(w for _, w in seen) <= 40
    n = len(seen)
    assert n == len(tile_starts(100, 40, 16)) * len(tile_starts(90, 40, 16)) > 4
    assert calls == [(i, n) for i in range(1, n + 1)]


def test_identity_model_blends_to_the_input_exactly():
    """Weights of overlapping tiles sum to 1: a nearest-neighbour "model" gives the nearest upscale."""

    def nearest(t):
        return torch.nn.functional.interpolate(t, scale_factor=3, mode="nearest")

    x = torch.rand(1, 3, 37, 53)
    out = upscale_tiled(nearest, x, 3, tile=16, overlap=8)
    torch.testing.assert_close(out, nearest(x), atol=1e-6, rtol=0)


def test_bad_overlap_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        upscale_tiled(lambda t: t, torch.rand(1, 3, 40, 40), 1, tile=16, overlap=16)
