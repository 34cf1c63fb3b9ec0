"""Token merging for Stable Diffusion (Bolya & Hoffman 2023, "Token Merging for Fast Stable Diffusion").

Before the self-attention (``attn1``) of each transformer block at the highest resolution level(s),
the tokens are split on a 2D grid into *dst* (one per ``sx x sy`` cell) and *src* (the rest);
the ``r = ratio * N`` src tokens most similar (cosine, on the block's input) to some dst token are
averaged into it, attention runs on the ``N - r`` merged tokens, and its output is copied back to
every token (unmerge). As A1111 applies the reference implementation ``tomesd``: sx = sy = 2,
``max_downsample`` 1, ``use_rand=False`` (the dst token is the top-left of its cell, so the same
request gives the same pixels and an image does not depend on its batch neighbours), attention
only (not cross-attention, not the MLP).

Nothing is patched: :func:`token_merging` installs :class:`ToMeProcessor` wrappers around the
layers' own processors with diffusers' public ``Attention.set_processor`` and a forward pre-hook
on each block (its input is the similarity metric, as in tomesd), and restores both on exit.
:class:`ToMeUNet` does that around every UNet call, so it composes with DeepCache (whose shallow
path runs the top-level blocks directly) and never leaves the UNet changed between calls.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SX = SY = 2  # tomesd's default stride: one dst token per 2x2 cell
MAX_DOWNSAMPLE = 1  # tomesd's default: only the full-resolution level (A1111's default too)


def grid_split(
    h: int, w: int, sx: int = SX, sy: int = SY, device: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, dst) token indices of an ``h x w`` grid, row-major: dst = top-left of every whole cell.

    Tokens of a ragged last row/column (``h % sy``, ``w % sx``) are all src, as in tomesd.
    """
    is_dst = torch.zeros(h, w, dtype=torch.bool, device=device)
    is_dst[: (h // sy) * sy : sy, : (w // sx) * sx : sx] = True
    flat = is_dst.flatten()  # (h * w,)
    return (~flat).nonzero().squeeze(1), flat.nonzero().squeeze(1)  # (Ns,), (Nd,)


def _rows(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(*index.shape, channels)  # (B, K) -> (B, K, C)


@dataclass(frozen=True)
class Merge:
    """One bipartite soft matching of B rows of N tokens: ``merge`` (B, N, C) -> (B, N - r, C), ``unmerge`` back."""

    src: torch.Tensor  # (Ns,) token index of each src token
    dst: torch.Tensor  # (Nd,) token index of each dst token
    kept: torch.Tensor  # (B, Ns - r) positions in src of the tokens left alone
    moved: torch.Tensor  # (B, r) positions in src of the tokens merged away
    into: torch.Tensor  # (B, r) position in dst each moved token is averaged into

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """``[kept src tokens, dst tokens averaged with the src tokens merged into them]``."""
        c = x.shape[-1]
        src, dst = x[:, self.src], x[:, self.dst]  # (B, Ns, C), (B, Nd, C)
        kept = src.gather(1, _rows(self.kept, c))  # (B, Ns - r, C)
        moved = src.gather(1, _rows(self.moved, c))  # (B, r, C)
        dst = dst.scatter_reduce(1, _rows(self.into, c), moved, reduce="mean")  # include_self: dst counts too
        return torch.cat([kept, dst], dim=1)  # (B, N - r, C)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """Every token gets its merged token's value: (B, N - r, C) -> (B, N, C)."""
        b, _, c = y.shape
        kept, dst = y[:, : self.kept.shape[1]], y[:, self.kept.shape[1] :]  # (B, Ns - r, C), (B, Nd, C)
        out = y.new_empty(b, self.src.numel() + self.dst.numel(), c)  # (B, N, C)
        out[:, self.dst] = dst
        out.scatter_(1, _rows(self.src[self.kept], c), kept)
        out.scatter_(1, _rows(self.src[self.moved], c), dst.gather(1, _rows(self.into, c)))
        return out


@torch.no_grad()
def bipartite_soft_matching(
    metric: torch.Tensor, h: int, w: int, r: int, sx: int = SX, sy: int = SY
) -> Merge:
    """tomesd's ``bipartite_soft_matching_random2d`` without randomness: metric (B, h * w, C).

    Each src token's best dst is the one of highest cosine similarity; the ``r`` src tokens with
    the highest best similarity are merged (at most all src tokens).
    """
    src, dst = grid_split(h, w, sx, sy, metric.device)
    r = min(r, src.numel())
    unit = F.normalize(metric, dim=-1)
    scores = unit[:, src] @ unit[:, dst].transpose(1, 2)  # (B, Ns, Nd)
    best, best_dst = scores.max(dim=-1)  # (B, Ns)
    order = best.argsort(dim=-1, descending=True, stable=True)  # (B, Ns): most similar first
    moved, kept = order[:, :r], order[:, r:]
    return Merge(src, dst, kept, moved, best_dst.gather(1, moved))


def level_grid(
    latent_hw: tuple[int, int], tokens: int, max_downsample: int = MAX_DOWNSAMPLE
) -> tuple[int, int] | None:
    """The (h, w) token grid of a UNet level with ``tokens`` tokens, or None above ``max_downsample``.

    As tomesd: downsample = ceil(sqrt(h * w // tokens)); each level's grid is ceil(h / downsample)
    (the UNet's stride-2 convolutions round up).
    """
    h, w = latent_hw
    down = math.ceil(math.sqrt(h * w // tokens)) if tokens else 0
    if not 1 <= down <= max_downsample:
        return None
    grid = math.ceil(h / down), math.ceil(w / down)
    return grid if grid[0] * grid[1] == tokens else None


class ToMeProcessor:
    """Attention processor: merge the query tokens, run the layer's own processor, unmerge.

    ``capture`` is the forward pre-hook of the layer's transformer block: its input
    ``hidden_states`` (B, N, C) is the similarity metric (tomesd uses the block input too).
    """

    def __init__(
        self, inner: Any, ratio: float, latent_hw: tuple[int, int], max_downsample: int = MAX_DOWNSAMPLE
    ):
        self.inner = inner
        self.ratio = ratio
        self.latent_hw = latent_hw
        self.max_downsample = max_downsample
        self.metric: torch.Tensor | None = None  # (B, N, C) input of the block, set per block call
        self.tokens: list[int] = []  # tokens attention saw, per call (the tests read it)

    def capture(self, _block: Any, args: tuple, kwargs: dict) -> None:
        self.metric = args[0] if args else kwargs.get("hidden_states")

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # (B, N, C)
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        metric, self.metric = self.metric, None
        merge = self._matching(hidden_states, metric, attention_mask)
        x = hidden_states if merge is None else merge.merge(hidden_states)  # (B, N - r, C)
        self.tokens.append(x.shape[1])
        out = self.inner(
            attn, x, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        return out if merge is None else merge.unmerge(out)

    def _matching(
        self, x: torch.Tensor, metric: torch.Tensor | None, mask: torch.Tensor | None
    ) -> Merge | None:
        """The merge for this call, or None: ratio 0, a mask, no metric, or a level too deep."""
        if (
            self.ratio <= 0
            or mask is not None
            or x.ndim != 3
            or metric is None
            or metric.shape[:2] != x.shape[:2]
        ):
            return None
        grid = level_grid(self.latent_hw, x.shape[1], self.max_downsample)
        r = int(x.shape[1] * self.ratio)
        if grid is None or r <= 0:
            return None
        return bipartite_soft_matching(metric, grid[0], grid[1], r)


def supports_tome(unet: Any) -> bool:
    """True for UNets with diffusers attention processors and self-attention (``attn1``) layers."""
    procs = getattr(unet, "attn_processors", None)
    return isinstance(procs, dict) and any(name.endswith("attn1.processor") for name in procs)


def self_attention_layers(unet: Any) -> list[tuple[Any, Any]]:
    """(transformer block, its ``attn1``) of every self-attention layer, from ``unet.attn_processors``."""
    names = [
        n.removesuffix(".attn1.processor") for n in unet.attn_processors if n.endswith("attn1.processor")
    ]
    return [(block, block.attn1) for block in map(unet.get_submodule, names)]


@contextlib.contextmanager
def token_merging(
    layers: list[tuple[Any, Any]],
    ratio: float,
    latent_hw: tuple[int, int],
    max_downsample: int = MAX_DOWNSAMPLE,
) -> Iterator[list[ToMeProcessor]]:
    """Install ToMe on the given ``attn1`` layers for latents of ``latent_hw``; restore them on exit.

    ``layers`` as :func:`self_attention_layers` gives them. Each layer gets a :class:`ToMeProcessor`
    around its own processor (diffusers' public ``Attention.set_processor``, which
    ``unet.set_attn_processor`` calls per layer; per layer because a UNet-wide call walks every
    module, ~30 ms for SD 1.5 here vs ~0.1 ms) and its block a forward pre-hook. Layers deeper than
    ``max_downsample`` run unmerged (their processor passes through). Yields the processors.
    """
    previous = [attn.get_processor() for _, attn in layers]
    installed = [ToMeProcessor(proc, ratio, latent_hw, max_downsample) for proc in previous]
    hooks = []
    try:
        for (block, attn), tome in zip(layers, installed):
            hooks.append(block.register_forward_pre_hook(tome.capture, with_kwargs=True))
            attn.set_processor(tome)
        yield installed
    finally:
        for (_, attn), proc in zip(layers, previous):
            attn.set_processor(proc)
        for hook in hooks:
            hook.remove()


class ToMeUNet:
    """Callable like the UNet: each call runs ``inner`` (the UNet or a DeepCache wrapper of it)
    with token merging installed on ``unet``'s self-attention for that call's latent size.

    Installed per call, not per batch: the UNet is never left changed between calls, whatever
    the sampler raises, and each call knows its latent (h, w) from its sample.
    """

    def __init__(self, inner: Any, unet: Any, ratio: float, max_downsample: int = MAX_DOWNSAMPLE) -> None:
        if not 0 <= ratio < 1:
            raise ValueError(f"token merging ratio must be in [0, 1), got {ratio}")
        self.inner = inner
        self.layers = self_attention_layers(unet)
        self.ratio = ratio
        self.max_downsample = max_downsample
        self.config = unet.config

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        with token_merging(self.layers, self.ratio, tuple(sample.shape[-2:]), self.max_downsample):
            return self.inner(sample, timestep, **kwargs)
