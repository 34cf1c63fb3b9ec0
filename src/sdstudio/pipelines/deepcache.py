"""DeepCache (Ma, Fang & Wang 2023, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent sampler steps produce nearly the same high-level UNet features. Every ``interval`` calls
the UNet runs in full and the output of its second-to-last up block (the deep path's result) is
kept; the calls in between run only the shallow path: ``conv_in`` -> first down block -> last up
block (fed with the cached deep features and the fresh shallow skips) -> ``conv_out``.

The full calls go through the unchanged ``unet(...)``; the deep features are captured with a
public forward hook on ``up_blocks[-2]``. The shallow call composes the UNet's own public
submodules in the order ``UNet2DConditionModel.forward`` uses them. Nothing is patched.
"""

from __future__ import annotations

from typing import Any

import torch


class DeepCacheUNet:
    """Callable like ``unet(sample, t, encoder_hidden_states=..., added_cond_kwargs=..., return_dict=False)``.

    A fresh instance per sampled batch: its cache belongs to one trajectory. When a call has fewer
    rows than the cached ones (CFG skipped the unconditional rows, which come first), the last rows
    of the cache are used; a call with more rows than cached runs in full.
    """

    def __init__(self, unet: Any, interval: int) -> None:
        if interval < 1:
            raise ValueError(f"DeepCache interval must be >= 1, got {interval}")
        self.unet = unet
        self.interval = interval
        self.calls = 0
        self.full_calls = 0
        self._deep: torch.Tensor | None = None  # (B, C, h, w) output of up_blocks[-2]
        self.config = unet.config

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        full = self.calls % self.interval == 0 or self._deep is None or self._deep.shape[0] < sample.shape[0]
        self.calls += 1
        if full:
            self.full_calls += 1
            return self._full(sample, timestep, **kwargs)
        return (self._shallow(sample, timestep, **kwargs),)

    def _full(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor]:
        def keep(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
            self._deep = output

        handle = self.unet.up_blocks[-2].register_forward_hook(keep)
        try:
            return self.unet(sample, timestep, **kwargs)
        finally:
            handle.remove()

    def _shallow(
        self,
        sample: torch.Tensor,  # (B, C_in, h, w)
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict | None = None,
        return_dict: bool = False,
    ) -> torch.Tensor:
        """The shallow path of ``UNet2DConditionModel.forward`` with the cached deep features."""
        u = self.unet
        if u.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = u.time_embedding(u.get_time_embed(sample=sample, timestep=timestep), None)
        aug = u.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states,
                              added_cond_kwargs=added_cond_kwargs or {})  # fmt: skip
        emb = emb + aug if aug is not None else emb
        if u.time_embed_act is not None:
            emb = u.time_embed_act(emb)
        context = u.process_encoder_hidden_states(
            encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs or {}
        )
        h = u.conv_in(sample)  # (B, C0, h, w)
        first, last = u.down_blocks[0], u.up_blocks[-1]
        if getattr(first, "has_cross_attention", False):
            _, res = first(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            _, res = first(hidden_states=h, temb=emb)
        skips = ((h, *res))[: len(last.resnets)]  # the skips the last up block consumes
        deep = self._deep[-sample.shape[0] :]  # (B, C, h, w): the cond rows when uncond was skipped
        if getattr(last, "has_cross_attention", False):
            out = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips,
                       encoder_hidden_states=context)  # fmt: skip
        else:
            out = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips)
        if u.conv_norm_out is not None:
            out = u.conv_act(u.conv_norm_out(out))
        return u.conv_out(out)  # (B, C_out, h, w)


def supports_deepcache(unet: Any) -> bool:
    """True for UNets whose forward composition DeepCache assumes (no class labels, >= 2 up blocks)."""
    cfg = unet.config
    return (
        len(getattr(unet, "up_blocks", ())) >= 2
        and getattr(unet, "class_embedding", None) is None
        and cfg.get("addition_embed_type") in (None, "text_time")
    )
