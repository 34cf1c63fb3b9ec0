"""Classifier-free guidance as a denoiser wrapper (Ho & Salimans 2022). No model code.

``CFGDenoiser`` turns a conditional denoiser ``D(x, sigma, cond) -> x0`` into the plain
``D(x, sigma)`` the samplers call. Conditioning is looked up *per step* (``cond_at(step)``) so
prompt editing and alternation can change it during sampling; ``post_denoise`` hooks let
pipelines (inpainting mask blending) adjust the prediction without touching the samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

CondDenoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class Composite:
    """``AND``-composed conditioning (Liu et al. 2022, Composable Diffusion): ``(cond, weight)`` parts."""

    parts: tuple[tuple[Any, float], ...]


def cond_parts(cond: Any) -> tuple[tuple[Any, float], ...]:
    """The ``(cond, weight)`` parts of a plain or composite conditioning."""
    return cond.parts if isinstance(cond, Composite) else ((cond, 1.0),)


MAX_PASSES_PER_CALL = 4  # uncond + 3 AND parts in one model call; more parts go in further calls


class CFGDenoiser:
    """``D(x, sigma) = D_u + scale * sum_i w_i (D_i - D_u)``, evaluated as one batch of (1 + parts) B.

    With one part of weight 1 this is plain classifier-free guidance; with ``AND`` parts it is
    A1111's composable diffusion.
    """

    def __init__(
        self,
        inner: CondDenoiser,
        cond_at: Callable[[int], Any],
        uncond_at: Callable[[int], Any],
        cfg_scale: float,
        sigmas: torch.Tensor,
        concat: Callable[[Sequence[Any]], Any],
        post_denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        s_min_uncond: float = 0.0,
        uncond_every_step: bool = False,
        max_passes: int = MAX_PASSES_PER_CALL,
    ) -> None:
        self.inner = inner
        self.max_passes = max_passes  # conditionings per model call: AND parts go in chunks of this
        self.s_min_uncond = s_min_uncond  # A1111 "NGMS": below this sigma the uncond pass may be skipped
        self.uncond_every_step = uncond_every_step  # skip on every call, not only odd ones ("NGMS all steps")
        self.calls = 0  # A1111's CFGDenoiser.step: counts denoiser calls
        self.cond_at, self.uncond_at = cond_at, uncond_at
        self.cfg_scale = cfg_scale
        self.sigmas = sigmas
        self.concat = concat
        self.post_denoise = post_denoise

    def step_of(self, sigma: torch.Tensor) -> int:
        """Index of the sampler step a sigma belongs to (second-order midpoints map to the step before)."""
        s = float(sigma.flatten()[0])
        below = (self.sigmas[:-1] >= s - 1e-6).nonzero()
        return int(below[-1]) if len(below) else 0

    def skips_uncond(self, sigma: torch.Tensor) -> bool:
        """A1111 negative guidance minimum sigma: skip the uncond pass on odd calls below ``s_min_uncond``.

        The skipped call returns the conditional prediction (A1111 puts the cond output where the
        uncond one would be, so guidance vanishes for that call).
        """
        skip = self.s_min_uncond > 0 and float(sigma.flatten()[0]) < self.s_min_uncond
        return skip and (self.uncond_every_step or self.calls % 2 == 1)

    def _passes(self, x: torch.Tensor, sigma: torch.Tensor, conds: list) -> list[torch.Tensor]:
        """The denoised x for each conditioning: batched ``max_passes`` at a time along the batch axis,
        so an ``AND`` prompt with many parts holds at most that many batches at once (one call, as
        before, for CFG with up to ``max_passes - 1`` parts)."""
        outs: list[torch.Tensor] = []
        for start in range(0, len(conds), self.max_passes):
            group = conds[start : start + self.max_passes]
            n = len(group)
            batch = self.concat(group) if n > 1 else group[0]
            outs.extend(self.inner(torch.cat([x] * n), torch.cat([sigma] * n), batch).chunk(n))
        return outs

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        step = self.step_of(sigma)
        parts = cond_parts(self.cond_at(step))
        skip_uncond = self.skips_uncond(sigma)
        self.calls += 1
        if self.cfg_scale == 1.0 and len(parts) == 1 and parts[0][1] == 1.0:
            denoised = self.inner(x, sigma, parts[0][0])
        elif skip_uncond:
            outs = self._passes(x, sigma, [c for c, _ in parts])
            guidance = sum((d_c - outs[0]) * w for (_, w), d_c in zip(parts, outs))
            denoised = outs[0] + guidance * self.cfg_scale
        else:
            outs = self._passes(x, sigma, [self.uncond_at(step), *(c for c, _ in parts)])
            d_u = outs[0]
            guidance = sum((d_c - d_u) * w for (_, w), d_c in zip(parts, outs[1:]))
            denoised = d_u + guidance * self.cfg_scale
        if self.post_denoise is not None:
            denoised = self.post_denoise(denoised, sigma)
        return denoised
