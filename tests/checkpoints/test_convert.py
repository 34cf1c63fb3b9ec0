"""Key maps original <-> diffusers: bit-exact round trips, known SD 1.x indices, full-size key coverage."""

from __future__ import annotations

import pytest
import torch

from sdstudio.families.sd.architectures import ARCHITECTURES, component_config
from sdstudio.families.sd.keymap import (
    canonical_text_keys,
    original_to_diffusers,
    unet_prefix_map,
    unet_to_original,
    vae_to_original,
)
from sdstudio.models.save import model_components
from tests.checkpoints.conftest import original_state_dict


@pytest.mark.parametrize("name", ["sd1", "sd1-inpaint", "sd2", "sd2-v", "sdxl"])
def test_round_trip_is_bit_exact(tiny_models, name):
    arch, components, configs = model_components(tiny_models[name])
    _, original = original_state_dict(tiny_models[name])
    back = original_to_diffusers(original, arch, configs)
    for component, sd in components.items():
        assert back[component].keys() == sd.keys(), component
        for key, value in sd.items():
            assert back[component][key].dtype == value.dtype, key
            assert torch.equal(back[component][key], value), key


def test_original_layout_prefixes_and_shapes(tiny_models):
    _, sd1 = original_state_dict(tiny_models["sd1"])
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in sd1
    q = [k for k in sd1 if k.startswith("first_stage_model.encoder.mid.attn_1.q.weight")]
    assert q and sd1[q[0]].ndim == 4 and sd1[q[0]].shape[2:] == (1, 1)  # 1x1 conv in the original VAE
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in sd1
    )

    _, sd2 = original_state_dict(tiny_models["sd2"])
    width = tiny_models["sd2"].text_encoders[0].config.hidden_size
    fused = sd2["cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert fused.shape == (3 * width, width)
    assert sd2["cond_stage_model.model.positional_embedding"].shape == (77, width)
    assert not any(k.startswith("cond_stage_model.transformer.") for k in sd2)

    _, xl = original_state_dict(tiny_models["sdxl"])
    enc2 = tiny_models["sdxl"].text_encoders[1]
    proj = xl["conditioner.embedders.1.model.text_projection"]
    assert torch.equal(proj, enc2.text_projection.weight.T)  # OpenCLIP: x @ text_projection
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in xl
    assert "model.diffusion_model.label_emb.0.0.weight" in xl  # SDXL add_embedding


def test_sd1_unet_indices_match_the_original_layout():
    """Known SD 1.x facts (A1111 / CompVis openaimodel): where each diffusers block lands."""
    m = {d: o for d, o, _ in unet_prefix_map(component_config(ARCHITECTURES["sd1"], "unet"))}
    assert m["down_blocks.0.attentions.1."] == "input_blocks.2.1."
    assert m["down_blocks.0.downsamplers.0.conv."] == "input_blocks.3.0.op."
    assert m["down_blocks.3.resnets.1."] == "input_blocks.11.0."
    assert m["up_blocks.0.upsamplers.0."] == "output_blocks.2.1."  # no attention in the first up block
    assert m["up_blocks.1.upsamplers.0."] == "output_blocks.5.2."
    assert m["up_blocks.3.attentions.2."] == "output_blocks.11.1."
    assert m["mid_block.attentions.0."] == "middle_block.1."


@pytest.mark.parametrize("name", ["sd1", "sd2-v", "sdxl", "sdxl-inpaint"])
def test_full_size_key_maps_cover_every_key(name):
    """Shipped full-size configs, built on the meta device: every key maps and converts back."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    arch = ARCHITECTURES[name]
    unet_cfg, vae_cfg = component_config(arch, "unet"), component_config(arch, "vae")
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_cfg).state_dict()
        vae = AutoencoderKL.from_config(vae_cfg).state_dict()
    orig_unet = {"model.diffusion_model." + k: v for k, v in unet_to_original(unet, unet_cfg).items()}
    orig_vae = {"first_stage_model." + k: v for k, v in vae_to_original(vae, vae_cfg).items()}
    back_unet = convert_ldm_unet_checkpoint(orig_unet, unet_cfg)
    back_vae = convert_ldm_vae_checkpoint(orig_vae, vae_cfg)
    assert back_unet.keys() == unet.keys()
    assert back_vae.keys() == vae.keys()
    assert all(back_unet[k].shape == v.shape for k, v in unet.items())
    assert all(back_vae[k].shape == v.shape for k, v in vae.items())


def test_canonical_text_keys_adds_text_model_prefix():
    sd = {"embeddings.token_embedding.weight": torch.zeros(1), "text_projection.weight": torch.zeros(1)}
    assert set(canonical_text_keys(sd)) == {
        "text_model.embeddings.token_embedding.weight",
        "text_projection.weight",
    }


@pytest.mark.parametrize("name", ["sd1", "sd2", "sdxl"])
def test_full_size_text_encoders_as_real_files_store_them(name):
    """Shipped text-encoder configs on the meta device, in the layout real single files use.

    Real SD 2.x files carry all 24 OpenCLIP layers and a text_projection that SD 2 does not use;
    real files also carry position_ids. Conversion must yield exactly the module's keys and shapes.
    """
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdstudio.families.sd.keymap import (
        clip_to_openclip,
        clip_to_original,
        fit_text_keys,
        text_to_diffusers,
    )

    arch = ARCHITECTURES[name]
    for spec in arch.text_encoders:
        config = component_config(arch, spec.subfolder)
        cls = (
            CLIPTextModelWithProjection if spec.class_name == "CLIPTextModelWithProjection" else CLIPTextModel
        )
        with init_empty_weights():
            module = cls(CLIPTextConfig.from_dict(config))
        expected = module.state_dict()
        original = (clip_to_original if spec.layout == "clip" else clip_to_openclip)(expected)
        file = {spec.prefix + k: v for k, v in original.items()}
        width = config["hidden_size"]
        if name == "sd2":  # the unused last layer and projection of the ViT-H text tower
            last = f"{spec.prefix}transformer.resblocks.23."
            file[last + "attn.in_proj_weight"] = torch.empty(3 * width, width, device="meta")
            file[last + "ln_1.weight"] = torch.empty(width, device="meta")
            file[spec.prefix + "text_projection"] = torch.empty(width, width, device="meta")
        if spec.layout == "clip":
            file[spec.prefix + "text_model.embeddings.position_ids"] = torch.arange(77)[None]
        converted = fit_text_keys(text_to_diffusers(file, spec, config), expected.keys())
        assert converted.keys() == expected.keys(), spec.subfolder
        assert all(converted[k].shape == v.shape for k, v in expected.items())
