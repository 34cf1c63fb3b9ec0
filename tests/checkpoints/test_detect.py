"""Architecture detection from original-layout keys and shapes (ComfyUI / diffusers single-file rules)."""

from __future__ import annotations

import pytest
import torch

from sdstudio.errors import SDStudioError
from sdstudio.families.sd.detect import UNET_IN_KEY, detect_architecture
from sdstudio.families.sd.keymap import normalize_original_keys
from tests.checkpoints.conftest import original_state_dict


def _nine_channels(sd):
    """Return a copy whose UNet conv_in takes 9 channels (latent 4 + mask 1 + masked latent 4)."""
    out = dict(sd)
    w = out[UNET_IN_KEY]
    out[UNET_IN_KEY] = torch.zeros(w.shape[0], 9, *w.shape[2:])
    return out


@pytest.mark.parametrize(
    ("name", "expected"),
    [("sd1", "sd1"), ("sd1-inpaint", "sd1-inpaint"), ("sd2", "sd2-v"), ("sd2-v", "sd2-v"), ("sdxl", "sdxl")],
)
def test_detects_each_architecture_from_keys(tiny_models, name, expected):
    # no metadata, no global_step: SD 2.x defaults to v-prediction like diffusers (stable-diffusion-2-1)
    _, sd = original_state_dict(tiny_models[name])
    assert detect_architecture(sd).name == expected


@pytest.mark.parametrize(
    ("name", "expected"), [("sd1", "sd1-inpaint"), ("sd2", "sd2-inpaint"), ("sdxl", "sdxl-inpaint")]
)
def test_detects_inpainting_variant_of_each_family(tiny_models, name, expected):
    _, sd = original_state_dict(tiny_models[name])
    arch = detect_architecture(_nine_channels(sd))
    assert arch.name == expected and arch.inpainting and arch.in_channels == 9
    assert arch.prediction_type == "epsilon"


def test_sd2_prediction_type_rules(tiny_models):
    _, sd = original_state_dict(tiny_models["sd2"])
    assert detect_architecture(sd, global_step=875000).name == "sd2"  # the 512 px base release
    assert detect_architecture(sd, global_step=110000).name == "sd2-v"
    assert detect_architecture(sd, metadata={"sdstudio.prediction_type": "epsilon"}).name == "sd2"
    assert detect_architecture(sd, metadata={"modelspec.prediction_type": "v"}).name == "sd2-v"
    # an explicit argument beats metadata and global_step
    assert detect_architecture(sd, prediction_type="eps", global_step=110000).name == "sd2"
    assert detect_architecture(sd, prediction_type="v_prediction", global_step=875000).model_arch == "sd2-v"


def test_explicit_v_prediction_on_sd1(tiny_models):
    _, sd = original_state_dict(tiny_models["sd1"])
    arch = detect_architecture(sd, prediction_type="v")
    assert arch.name == "sd1" and arch.prediction_type == "v_prediction"


def test_bad_prediction_type_argument(tiny_models):
    _, sd = original_state_dict(tiny_models["sd1"])
    with pytest.raises(SDStudioError, match="unknown prediction type 'x0'"):
        detect_architecture(sd, prediction_type="x0")


def test_unknown_layout_lists_what_was_found():
    sd = {"foo.bar.weight": torch.zeros(1), "foo.baz.bias": torch.zeros(1), "model.other": torch.zeros(1)}
    with pytest.raises(SDStudioError) as info:
        detect_architecture(sd)
    assert "unrecognised checkpoint layout" in str(info.value)
    assert "foo.bar.* (1)" in str(info.value) and "model.other.* (1)" in str(info.value)


def test_unet_without_text_encoder_uses_context_width():
    sd = {
        UNET_IN_KEY: torch.zeros(320, 4, 3, 3),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(
            320, 1024
        ),
    }
    assert detect_architecture(sd, prediction_type="epsilon").name == "sd2"
    sd["model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(
        320, 500
    )
    with pytest.raises(SDStudioError, match="context width 500"):
        detect_architecture(sd)


def test_unsupported_input_channels(tiny_models):
    _, sd = original_state_dict(tiny_models["sd1"])
    sd = dict(sd)
    sd[UNET_IN_KEY] = torch.zeros(16, 8, 3, 3)  # instruct-pix2pix style
    with pytest.raises(SDStudioError, match="8 input channels"):
        detect_architecture(sd)


def test_old_sd1_text_keys_are_normalized(tiny_models):
    _, sd = original_state_dict(tiny_models["sd1"])
    old = {
        k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
        for k, v in sd.items()
    }
    assert detect_architecture(normalize_original_keys(old)).name == "sd1"
    assert normalize_original_keys(old).keys() == sd.keys()
