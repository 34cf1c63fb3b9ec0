"""Architecture detection from an original-layout (CompVis/A1111) state dict's keys and shapes.

Mirrors ComfyUI ``supported_models`` (text-encoder key prefixes decide the family) and diffusers
``single_file_utils.infer_diffusers_model_type`` (9 input channels = inpainting; SD 2.x defaults to
v-prediction, the 768 px ``stable-diffusion-2-1``, unless the .ckpt says ``global_step == 875000``,
the 512 px base release). The file cannot say more: an explicit ``prediction_type`` wins, then
file metadata (``sdstudio.prediction_type`` written by our converter, or ``modelspec.prediction_type``).
"""

from __future__ import annotations

from collections import Counter

import torch

from sdstudio.errors import SDStudioError
from sdstudio.families.sd.architectures import FAMILIES, UNET_PREFIX, Architecture, Family, architecture_for

UNET_IN_KEY = UNET_PREFIX + "input_blocks.0.0.weight"  # (320, in_channels, 3, 3)
SD2_BASE_GLOBAL_STEP = 875000  # diffusers: "epsilon" if global_step == 875000 else "v_prediction"
PREDICTION_ALIASES = {
    "epsilon": "epsilon",
    "eps": "epsilon",
    "v_prediction": "v_prediction",
    "v": "v_prediction",
}
METADATA_PREDICTION_KEYS = ("sdstudio.prediction_type", "modelspec.prediction_type")


def normalize_prediction_type(value: str | None) -> str | None:
    """Return "epsilon" / "v_prediction" for a user or metadata value (eps, v, ...); None stays None."""
    if value is None:
        return None
    key = str(value).strip().lower()
    if key not in PREDICTION_ALIASES:
        raise SDStudioError(
            f"unknown prediction type {value!r}; allowed: epsilon (eps) or v_prediction (v)",
            field="prediction_type",
        )
    return PREDICTION_ALIASES[key]


def detect_family(state_dict: dict[str, torch.Tensor]) -> Family:
    """Return the SD family whose text-encoder keys are all present (SDXL, then SD 2.x, then SD 1.x).

    Files without text encoders fall back to the UNet cross-attention width (768 / 1024 / 2048).
    """
    for name in ("sdxl", "sd2", "sd1"):
        family = FAMILIES[name]
        if all(spec.marker_key in state_dict for spec in family.text_encoders):
            return family
    width = unet_context_dim(state_dict)
    for family in FAMILIES.values():
        if width == family.context_dim:
            return family
    raise SDStudioError(_unknown_layout_message(state_dict, width), field="model")


def unet_context_dim(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Return the UNet cross-attention context width (attn2.to_k input features), or None."""
    for key, value in state_dict.items():
        if key.startswith(UNET_PREFIX) and key.endswith("attn2.to_k.weight"):
            return int(value.shape[-1])
    return None


def detect_prediction_type(
    family: Family,
    inpainting: bool,
    *,
    prediction_type: str | None = None,
    metadata: dict[str, str] | None = None,
    global_step: int | None = None,
) -> str:
    """Return the prediction type: explicit > file metadata > diffusers' SD 2.x rule > epsilon."""
    explicit = normalize_prediction_type(prediction_type)
    if explicit:
        return explicit
    for key in METADATA_PREDICTION_KEYS:
        value = (metadata or {}).get(key)
        if value and value.strip().lower() in PREDICTION_ALIASES:
            return PREDICTION_ALIASES[value.strip().lower()]
    if family.name == "sd2" and not inpainting:
        return "epsilon" if global_step == SD2_BASE_GLOBAL_STEP else "v_prediction"
    return "epsilon"


def detect_architecture(
    state_dict: dict[str, torch.Tensor],
    *,
    prediction_type: str | None = None,
    metadata: dict[str, str] | None = None,
    global_step: int | None = None,
) -> Architecture:
    """Return the :class:`Architecture` of an original-layout state dict; SDStudioError if unknown."""
    if UNET_IN_KEY not in state_dict:
        raise SDStudioError(_unknown_layout_message(state_dict, None), field="model")
    in_channels = int(state_dict[UNET_IN_KEY].shape[1])
    if in_channels not in (4, 9):
        raise SDStudioError(
            f"unsupported UNet with {in_channels} input channels ({UNET_IN_KEY}); supported: 4 (txt2img) "
            "or 9 (inpainting)",
            field="model",
        )
    family = detect_family(state_dict)
    inpainting = in_channels == 9
    prediction = detect_prediction_type(
        family, inpainting, prediction_type=prediction_type, metadata=metadata, global_step=global_step
    )
    return architecture_for(family.name, inpainting=inpainting, prediction_type=prediction)


def _unknown_layout_message(state_dict: dict[str, torch.Tensor], context_dim: int | None) -> str:
    prefixes = Counter(".".join(key.split(".")[:2]) for key in state_dict)
    found = ", ".join(f"{p}.* ({n})" for p, n in prefixes.most_common(8))
    context = f"; UNet context width {context_dim}" if context_dim else ""
    return (
        "unrecognised checkpoint layout: expected an SD 1.x, SD 2.x or SDXL single file with "
        f"{UNET_PREFIX}* and cond_stage_model.* or conditioner.embedders.* keys; found {found or 'no keys'}"
        f"{context}"
    )
