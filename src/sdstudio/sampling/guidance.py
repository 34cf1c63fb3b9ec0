"""Classifier-free guidance as a denoiser wrapper (Ho & Salimans 2022). No model code.

``CFGDenoiser`` turns a conditional denoiser ``D(x, sigma, cond) -> x0`` into the plain
``D(x, sigma)`` the samplers call. Conditioning is looked up *per step* (``cond_at(step)``) so
prompt editing and alternation can change it during sampling; ``post_denoise`` hooks let
pipelines (inpainting mask blending) adjust the prediction without touching the samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

CondDenoiser = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class CFGDenoiser:
    """``D(x, sigma) = D_u + scale * (D_c - D_u)``, evaluated as one batch of 2B."""

    def __init__(
        self,
        inner: CondDenoiser,
        cond_at: Callable[[int], Any],
        uncond_at: Callable[[int], Any],
        cfg_scale: float,
        sigmas: torch.Tensor,
        concat: Callable[[Sequence[Any]], Any],
        post_denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.inner = inner
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

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        step = self.step_of(sigma)
        cond = self.cond_at(step)
        if self.cfg_scale == 1.0:
            denoised = self.inner(x, sigma, cond)
        else:
            both = self.concat([self.uncond_at(step), cond])
            d_u, d_c = self.inner(torch.cat([x, x]), torch.cat([sigma, sigma]), both).chunk(2)
            denoised = d_u + (d_c - d_u) * self.cfg_scale
        if self.post_denoise is not None:
            denoised = self.post_denoise(denoised, sigma)
        return denoised
