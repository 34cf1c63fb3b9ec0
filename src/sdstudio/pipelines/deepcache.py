"""DeepCache (Ma, Fang & Wang 2023, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent sampler steps produce nearly the same high-level UNet features. Every ``interval`` calls
the UNet runs in full and the output of its second-to-last up block (the deep path's result) is
kept; the calls in between run only the shallow path: ``conv_in`` -> first down block -> last up
block (fed with the cached deep features and the fresh shallow skips) -> ``conv_out``
(:mod:`sdstudio.families.sd.unet_split`). Both kinds of call run on PyTorch, or on another runtime's
compiled UNet (OpenVINO) while it still matches the PyTorch weights.
"""

from __future__ import annotations

from typing import Any

import torch

from sdstudio.families.sd.unet_split import full_forward, shallow_forward


class DeepCacheUNet:
    """Callable like ``unet(sample, t, encoder_hidden_states=..., added_cond_kwargs=..., return_dict=False)``.

    A fresh instance per sampled batch: its cache belongs to one trajectory. When a call has fewer
    rows than the cached ones (CFG skipped the unconditional rows, which come first), the last rows
    of the cache are used; a call with more rows than cached runs in full. ``compiled`` (an
    ``OpenVINOUNet`` that matches ``unet``) runs both kinds of call when given.
    """

    def __init__(self, unet: Any, interval: int, compiled: Any = None) -> None:
        if interval < 1:
            raise ValueError(f"DeepCache interval must be >= 1, got {interval}")
        self.unet = unet
        self.compiled = compiled
        self.interval = interval
        self.calls = 0
        self.full_calls = 0
        self._deep: torch.Tensor | None = None  # (B, C, h, w) output of up_blocks[-2]
        self.config = unet.config

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        kwargs.pop("return_dict", None)
        full = self.calls % self.interval == 0 or self._deep is None or self._deep.shape[0] < sample.shape[0]
        self.calls += 1
        if full:
            self.full_calls += 1
            runner = self.compiled.full_with_deep if self.compiled is not None else self._torch_full
            out, self._deep = runner(sample, timestep, **kwargs)
            return (out,)
        deep = self._deep[-sample.shape[0] :]  # (B, C, h, w): the cond rows when uncond was skipped
        runner = self.compiled.shallow if self.compiled is not None else self._torch_shallow
        return (runner(sample, timestep, deep=deep, **kwargs),)

    def _torch_full(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any):
        return full_forward(self.unet, sample, timestep, **kwargs)

    def _torch_shallow(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return shallow_forward(self.unet, sample, timestep, **kwargs)
