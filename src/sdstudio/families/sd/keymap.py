"""Key maps between the original single-file layout (CompVis/A1111) and diffusers components.

original -> diffusers uses diffusers' own ``single_file_utils`` converters (the code
``from_single_file`` runs), so both loaders see identical tensors. diffusers -> original has no
diffusers counterpart; it is written here as explicit prefix maps built from the component
configs (nanoGPT ``from_pretrained`` style), every key accounted for and every shape asserted.
A round trip diffusers -> original -> diffusers is bit-exact (tests/checkpoints).

Text-encoder state dicts use the classic transformers key names (``text_model.*``, as diffusers
folders store them); ``fit_text_keys`` adapts them to the installed transformers' module layout.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import torch

from sdstudio.families.sd.architectures import UNET_PREFIX, VAE_PREFIX, Architecture, TextEncoderSpec

StateDict = dict[str, torch.Tensor]

# diffusers ResnetBlock2D -> openaimodel ResBlock (UNet) / taming ResnetBlock (VAE)
UNET_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("time_emb_proj.", "emb_layers.1."),
    ("conv_shortcut.", "skip_connection."),
)
VAE_RESNET_RENAMES = (("conv_shortcut.", "nin_shortcut."),)
# diffusers Attention (linear q/k/v/out) -> taming AttnBlock (1x1 convs)
VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)


# ----------------------------------------------------------------------------- original -> diffusers


def normalize_original_keys(state_dict: StateDict) -> StateDict:
    """Return the state dict with old SD 1.x text keys (``cond_stage_model.transformer.embeddings...``,
    saved by transformers < 4.22) moved under ``text_model.``, as diffusers and A1111 expect."""
    old = "cond_stage_model.transformer."
    if not any(k.startswith((old + "embeddings.", old + "encoder.")) for k in state_dict):
        return state_dict
    fixed = {}
    for key, value in state_dict.items():
        if key.startswith(old) and not key.startswith(old + "text_model."):
            key = old + "text_model." + key[len(old) :]
        fixed[key] = value
    return fixed


def original_to_diffusers(
    state_dict: StateDict, arch: Architecture, configs: dict[str, dict[str, Any]]
) -> dict[str, StateDict]:
    """Split an original-layout state dict into diffusers component state dicts (unet, vae, text_encoder[_2]).

    ``configs`` maps component names to their diffusers/transformers config dicts.
    """
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    components = {
        "unet": convert_ldm_unet_checkpoint(state_dict, dict(configs["unet"])),
        "vae": convert_ldm_vae_checkpoint(state_dict, dict(configs["vae"])),
    }
    for spec in arch.text_encoders:
        components[spec.subfolder] = text_to_diffusers(state_dict, spec, configs[spec.subfolder])
    return components


def text_to_diffusers(state_dict: StateDict, spec: TextEncoderSpec, config: dict[str, Any]) -> StateDict:
    """Convert one text encoder (``spec.prefix`` keys) to transformers CLIP keys (``text_model.*``)."""
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint, convert_open_clip_checkpoint

    own = {k: v for k, v in state_dict.items() if k.startswith(spec.prefix)}
    if spec.layout == "clip":
        converted = convert_ldm_clip_checkpoint(own, remove_prefix=spec.prefix)
    else:
        shim = SimpleNamespace(config=SimpleNamespace(hidden_size=int(config["hidden_size"])))
        converted = convert_open_clip_checkpoint(shim, own, prefix=spec.prefix)
    # position_ids is a non-persistent buffer in transformers; old checkpoints still carry it
    return {k: v for k, v in converted.items() if not k.endswith("position_ids")}


def fit_text_keys(state_dict: StateDict, module_keys: Iterable[str]) -> StateDict:
    """Return text-encoder keys renamed to the module's layout (transformers >= 5.6 flattened
    ``CLIPTextModel``: no ``text_model.`` prefix; ``CLIPTextModelWithProjection`` keeps it)."""
    flattened = not any(k.startswith("text_model.") for k in module_keys)
    if not flattened:
        return state_dict
    return {k.removeprefix("text_model."): v for k, v in state_dict.items()}


def canonical_text_keys(state_dict: StateDict) -> StateDict:
    """Return a text-encoder state dict with classic ``text_model.*`` keys (inverse of ``fit_text_keys``)."""
    return {
        (k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
        for k, v in state_dict.items()
    }


# ----------------------------------------------------------------------------- diffusers -> original


def unet_prefix_map(config: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Return (diffusers prefix, original prefix, is_resnet) triples for a UNet2DConditionModel config.

    Original layout (openaimodel.UNetModel): input_blocks[0] = conv_in; then per down block
    ``layers_per_block`` (resnet, attention) pairs and one downsampler (all but the last block);
    middle_block = resnet, attention, resnet; output_blocks = per up block ``layers_per_block + 1``
    (resnet, attention) pairs, the upsampler after the attention (index 2) or resnet (index 1).
    """
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    assert isinstance(lpb, int), f"per-block layers_per_block {lpb!r} is not supported"
    up_types = config["up_block_types"]
    m = [
        ("time_embedding.linear_1.", "time_embed.0.", False),
        ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False),
        ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False),
        ("conv_norm_out.", "out.0.", False),
        ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True),
        ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for i in range(n):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            m.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0.", True))
            m.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1.", False))
        m.append(
            (f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{1 + i * (lpb + 1) + lpb}.0.op.", False)
        )
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            m.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0.", True))
            m.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1.", False))
        slot = 2 if "CrossAttn" in up_types[i] else 1
        m.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (lpb + 1) + lpb}.{slot}.", False))
    return m


def vae_prefix_map(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Return (diffusers prefix, original prefix, kind) triples for an AutoencoderKL config.

    kind is "resnet", "attention" or "plain". The original decoder numbers its up blocks from the
    lowest resolution upwards in reverse (``up.{n-1-i}``), and has ``layers_per_block + 1`` resnets each.
    """
    n = len(config["block_out_channels"])
    lpb = config["layers_per_block"]
    m = [
        ("encoder.conv_norm_out.", "encoder.norm_out.", "plain"),
        ("decoder.conv_norm_out.", "decoder.norm_out.", "plain"),
    ]
    for side in ("encoder", "decoder"):
        m.append((f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1.", "resnet"))
        m.append((f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2.", "resnet"))
        m.append((f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.", "attention"))
    for i in range(n):
        for j in range(lpb):
            m.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", "resnet"))
        m.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.", "plain"))
        for j in range(lpb + 1):
            m.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.", "resnet"))
        m.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.", "plain"))
    return m


def _rename(rest: str, renames: tuple[tuple[str, str], ...]) -> str:
    for old, new in renames:
        if rest.startswith(old):
            return new + rest[len(old) :]
    return rest


def _apply_prefix_map(key: str, prefix_map: list[tuple[str, str, Any]]) -> tuple[str, str, Any] | None:
    for old, new, kind in prefix_map:
        if key.startswith(old):
            return old, new, kind
    return None


def unet_to_original(state_dict: StateDict, config: dict[str, Any]) -> StateDict:
    """Map a diffusers UNet2DConditionModel state dict to openaimodel keys (without ``model.diffusion_model.``)."""
    prefix_map = unet_prefix_map(config)
    out: StateDict = {}
    for key, value in state_dict.items():
        hit = _apply_prefix_map(key, prefix_map)
        assert hit is not None, f"UNet key {key!r} has no original-layout counterpart"
        old, new, is_resnet = hit
        rest = key[len(old) :]
        new_key = new + (_rename(rest, UNET_RESNET_RENAMES) if is_resnet else rest)
        assert new_key not in out, f"two UNet keys map to {new_key!r}"
        out[new_key] = value
    assert len(out) == len(state_dict)
    return out


def vae_to_original(state_dict: StateDict, config: dict[str, Any]) -> StateDict:
    """Map a diffusers AutoencoderKL state dict to taming/LDM keys (without ``first_stage_model.``).

    The mid-block attention's linear q/k/v/out weights (C, C) become 1x1 conv weights (C, C, 1, 1).
    """
    prefix_map = vae_prefix_map(config)
    out: StateDict = {}
    for key, value in state_dict.items():
        hit = _apply_prefix_map(key, prefix_map)
        if hit is None:  # conv_in, conv_out, quant_conv, post_quant_conv keep their names
            new_key = key
        else:
            old, new, kind = hit
            rest = key[len(old) :]
            if kind == "resnet":
                rest = _rename(rest, VAE_RESNET_RENAMES)
            elif kind == "attention":
                rest = _rename(rest, VAE_ATTENTION_RENAMES)
                if rest.endswith("weight") and not rest.startswith("norm."):
                    assert value.ndim == 2 and value.shape[0] == value.shape[1], (
                        f"{key}: {tuple(value.shape)}"
                    )
                    value = value[:, :, None, None]  # (C, C) -> (C, C, 1, 1)
            new_key = new + rest
        assert new_key not in out, f"two VAE keys map to {new_key!r}"
        out[new_key] = value
    assert len(out) == len(state_dict)
    return out


def clip_to_original(state_dict: StateDict) -> StateDict:
    """Map a transformers CLIPTextModel state dict to the original ``<prefix>text_model.*`` keys."""
    return dict(canonical_text_keys(state_dict))


_OPENCLIP_LAYER_RENAMES = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


def clip_to_openclip(state_dict: StateDict) -> StateDict:
    """Map a transformers CLIP text model to OpenCLIP keys (``transformer.resblocks.N``, fused in_proj).

    q/k/v projections (D, D) are stacked into ``attn.in_proj_weight`` (3D, D); ``text_projection.weight``
    (P, D) becomes ``text_projection`` (D, P), since OpenCLIP computes ``x @ text_projection``.
    """
    sd = {k.removeprefix("text_model."): v for k, v in canonical_text_keys(state_dict).items()}
    out: StateDict = {}
    fused: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    plain = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    for key, value in sd.items():
        if key in plain:
            out[plain[key]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # (P, D) -> (D, P)
        elif key.startswith("encoder.layers."):
            layer, rest = key[len("encoder.layers.") :].split(".", 1)
            base = f"transformer.resblocks.{layer}."
            if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                _, proj, param = rest.split(".")
                fused.setdefault((base, param), {})[proj] = value
            else:
                renamed = _rename(rest, _OPENCLIP_LAYER_RENAMES)
                assert renamed != rest, f"text encoder key {key!r} has no OpenCLIP counterpart"
                out[base + renamed] = value
        else:
            raise AssertionError(f"text encoder key {key!r} has no OpenCLIP counterpart")
    for (base, param), parts in fused.items():
        q, k, v = parts["q_proj"], parts["k_proj"], parts["v_proj"]
        assert q.shape == k.shape == v.shape, f"{base}: q/k/v shapes differ"
        out[f"{base}attn.in_proj_{param}"] = torch.cat([q, k, v], dim=0)  # (3D, D) or (3D,)
    return out


def diffusers_to_original(
    components: dict[str, StateDict], arch: Architecture, configs: dict[str, dict[str, Any]]
) -> StateDict:
    """Assemble one original-layout state dict (A1111/CompVis single file) from diffusers components."""
    out: StateDict = {}

    def merge(mapped: StateDict, prefix: str) -> None:
        for key, value in mapped.items():
            assert prefix + key not in out, f"duplicate key {prefix + key!r}"
            out[prefix + key] = value

    merge(unet_to_original(components["unet"], configs["unet"]), UNET_PREFIX)
    merge(vae_to_original(components["vae"], configs["vae"]), VAE_PREFIX)
    for spec in arch.text_encoders:
        sd = components[spec.subfolder]
        merge(clip_to_original(sd) if spec.layout == "clip" else clip_to_openclip(sd), spec.prefix)
    return out
