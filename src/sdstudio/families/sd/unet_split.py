"""The diffusers ``UNet2DConditionModel`` split at its deep path, for DeepCache (Ma et al. 2023).

A full call runs the unchanged ``unet(...)`` and keeps the output of ``up_blocks[-2]`` (the deep
path's result, captured with a public forward hook); a shallow call composes the UNet's own public
submodules in the order ``UNet2DConditionModel.forward`` uses them: ``conv_in`` -> first down block
-> last up block (fed with the kept deep features and the fresh shallow skips) -> ``conv_out``.
Nothing is patched. Both the PyTorch sampling path (``pipelines.deepcache``) and the OpenVINO
graphs (``backends.openvino``) are built from these two functions.
"""

from __future__ import annotations

from typing import Any

import torch


def supports_split(unet: Any) -> bool:
    """True for UNets whose forward composition the split assumes (no class labels, >= 2 up blocks)."""
    cfg = unet.config
    return (
        len(getattr(unet, "up_blocks", ())) >= 2
        and getattr(unet, "class_embedding", None) is None
        and cfg.get("addition_embed_type") in (None, "text_time")
    )


def full_forward(unet: Any, sample: torch.Tensor, timestep: torch.Tensor,
                 **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``unet(sample, timestep, **kwargs)``'s output (B, C_out, h, w) and its deep features (B, C, h', w')."""
    kept: list[torch.Tensor] = []
    handle = unet.up_blocks[-2].register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        out = unet(sample, timestep, return_dict=False, **kwargs)[0]
    finally:
        handle.remove()
    return out, kept[-1]


def shallow_forward(
    unet: Any,
    sample: torch.Tensor,  # (B, C_in, h, w)
    timestep: torch.Tensor,
    encoder_hidden_states: torch.Tensor,  # (B, T, D)
    deep: torch.Tensor,  # (B, C, h', w'): full_forward's deep features for these rows
    added_cond_kwargs: dict | None = None,
) -> torch.Tensor:
    """The shallow path of ``UNet2DConditionModel.forward`` with given deep features -> (B, C_out, h, w)."""
    u = unet
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
    if getattr(last, "has_cross_attention", False):
        out = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips,
                   encoder_hidden_states=context)  # fmt: skip
    else:
        out = last(hidden_states=deep, temb=emb, res_hidden_states_tuple=skips)
    if u.conv_norm_out is not None:
        out = u.conv_act(u.conv_norm_out(out))
    return u.conv_out(out)  # (B, C_out, h, w)
