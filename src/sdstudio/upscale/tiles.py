"""Tiled upscaling with overlap blending: any image model ``f`` that maps (1, C, h, w) to
(1, C, h*s, w*s) runs on tiles of at most ``tile`` x ``tile`` input pixels.

Tiles overlap by ``overlap`` input pixels. Each tile's output is weighted by a ramp that is 0 on
the outer ``margin = overlap // 4`` pixels of each side it shares with a neighbour, rises linearly
over the next ``overlap - 2 * margin`` pixels, and is 1 inside; the weights of neighbouring tiles
sum to 1. A pixel with a non-zero weight therefore lies at least ``margin`` pixels inside its
tile, so where the model's receptive field reaches at most ``margin`` input pixels, the tiled
output equals the untiled one up to float rounding (tests/upscale: ``atol`` 1e-5). Models that see
further (ESRGAN's 23 RRDBs) differ near the seams, which the ramp blends away.

Memory: the output sum and weight planes, float32, ``16 * out_pixels`` bytes (a 2048x2048 result:
64 MiB; the division is in place), plus one tile's activations; never the whole image through the
model at once. Measured (bench/upscale_speed.py): 512 -> 2048 px in 128 px tiles of a tiny Compact
raised peak RSS by 96 MiB.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

TileProgress = Callable[[int, int], None]  # (tiles done, tiles in all)
DEFAULT_TILE = 192  # A1111's ESRGAN_tile default
DEFAULT_OVERLAP = 16  # A1111's ESRGAN_tile_overlap is 8; a ramp needs a little more


def tile_starts(size: int, tile: int, overlap: int, multiple_of: int = 1) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``size`` pixels, neighbours overlapping by at
    least ``overlap``; every start is a multiple of ``multiple_of`` (window-attention models) except
    the last, which ends at ``size``.

    >>> tile_starts(100, 40, 10)
    [0, 30, 60]
    >>> tile_starts(30, 40, 10)
    [0]
    """
    if size <= tile:
        return [0]
    stride = max(multiple_of, (tile - overlap) // multiple_of * multiple_of)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _ramp(length: int, lead: int, trail: int, margin: int) -> torch.Tensor:
    """(length,) weights: 0 for ``margin`` pixels then a linear rise over ``lead - 2*margin`` pixels at
    the start (when ``lead`` > 0: the overlap with the previous tile), the same mirrored at the end."""
    w = torch.ones(length)
    for n, flip in ((lead, False), (trail, True)):
        if n <= 0:
            continue
        m = min(margin, n // 2)
        rise = max(1, n - 2 * m)
        ramp = ((torch.arange(n, dtype=torch.float32) - m + 0.5) / rise).clamp(0, 1)
        seg = ramp.flip(0) if flip else ramp
        if flip:
            w[length - n :] = torch.minimum(w[length - n :], seg)
        else:
            w[:n] = torch.minimum(w[:n], seg)
    return w


def upscale_tiled(
    model: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    multiple_of: int = 1,
    progress: TileProgress | None = None,
) -> torch.Tensor:
    """Upscale ``image`` (1, C, H, W) in [0, 1] by ``scale`` tile by tile -> (1, C, H*scale, W*scale).

    ``tile`` <= 0 runs the whole image at once. ``progress(done, total)`` is called after each tile.
    """
    _, c, h, w = image.shape
    if tile <= 0 or (h <= tile and w <= tile):
        with torch.inference_mode():
            out = model(image).float()
        if progress:
            progress(1, 1)
        return out
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile): overlap {overlap}, tile {tile}")
    tile_h, tile_w = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile_h, overlap, multiple_of), tile_starts(w, tile_w, overlap, multiple_of)
    margin = overlap // 4
    out = torch.zeros(1, c, h * scale, w * scale)  # weighted sum
    weight = torch.zeros(1, 1, h * scale, w * scale)
    total, done = len(ys) * len(xs), 0
    for i, y in enumerate(ys):
        lead_y = ys[i - 1] + tile_h - y if i else 0
        trail_y = y + tile_h - ys[i + 1] if i + 1 < len(ys) else 0
        wy = _ramp(tile_h * scale, lead_y * scale, trail_y * scale, margin * scale)
        for j, x in enumerate(xs):
            lead_x = xs[j - 1] + tile_w - x if j else 0
            trail_x = x + tile_w - xs[j + 1] if j + 1 < len(xs) else 0
            wx = _ramp(tile_w * scale, lead_x * scale, trail_x * scale, margin * scale)
            with torch.inference_mode():
                piece = model(image[:, :, y : y + tile_h, x : x + tile_w]).float()  # (1, C, th*s, tw*s)
            wt = wy[:, None] * wx[None, :]  # (th*s, tw*s)
            ys_, xs_ = slice(y * scale, (y + tile_h) * scale), slice(x * scale, (x + tile_w) * scale)
            out[:, :, ys_, xs_] += piece.cpu() * wt
            weight[:, :, ys_, xs_] += wt
            done += 1
            if progress:
                progress(done, total)
    return out.div_(weight.clamp_min_(1e-8))  # in place: no third full-size plane
