"""Parity with diffusers' own single-file loader on files written by our converter.

Default suite: tiny SD 1.x and tiny SDXL (with distinct text-encoder widths, as in the real SDXL,
which diffusers needs to tell its two CLIPs apart). Slow: full-size SD 1.5 with random weights.
"""

from __future__ import annotations

import gc
import json
import os

import pytest
import torch

from sdstudio.families.sd.architectures import ARCHITECTURES, materialize_config_folder
from sdstudio.families.sd.tokenizer import clip_tokenizer
from sdstudio.models.loader import load_model
from sdstudio.models.save import model_components, save_single_file
from sdstudio.models.sdmodel import StableDiffusionModel
from tests.checkpoints.test_loader import component_outputs


def tiny_sdxl_distinct(seed: int = 0) -> StableDiffusionModel:
    """Tiny SDXL whose two text encoders differ in width (32 and 48 -> context 80), like 768/1280."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)

    def text_config(width: int, act: str) -> CLIPTextConfig:
        return CLIPTextConfig(
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=width,
            hidden_act=act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )

    unet = UNet2DConditionModel(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=80,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 48,
        transformer_layers_per_block=(1, 2),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        scaling_factor=0.13025,
    )
    return StableDiffusionModel(
        name="tiny-sdxl-distinct",
        arch="sdxl",
        unet=unet,
        vae=vae,
        text_encoders=[
            CLIPTextModel(text_config(32, "quick_gelu")),
            CLIPTextModelWithProjection(text_config(48, "gelu")),
        ],
        tokenizers=[clip_tokenizer(), clip_tokenizer(pad_token="!")],
        scheduler_config={"prediction_type": "epsilon", "num_train_timesteps": 1000},
    ).eval()


def config_folder_for(model: StableDiffusionModel, dest):
    """A diffusers config folder (shipped JSON + tokenizer) with this model's component configs."""
    arch, _, configs = model_components(model)
    folder = materialize_config_folder(arch, dest)
    for name, config in configs.items():
        if name != "scheduler":
            (folder / name / "config.json").write_text(json.dumps(config, default=list))
    return folder


def diffusers_pipeline(path, folder, sdxl: bool, dtype: torch.dtype = torch.float32):
    """diffusers' own loader: ``from_single_file(path, config=<local folder>, local_files_only=True)``."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    return cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=dtype)


def pipeline_as_model(pipe, sdxl: bool) -> StableDiffusionModel:
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if sdxl else [pipe.text_encoder]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if sdxl else [pipe.tokenizer]
    return StableDiffusionModel(
        "diffusers", "sdxl" if sdxl else "sd1", pipe.unet, pipe.vae, encoders, tokenizers, {}
    )


def assert_parity(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        torch.testing.assert_close(value, theirs[key], rtol=1e-5, atol=1e-5, msg=key)


@pytest.mark.parametrize("which", ["sd1", "sdxl"])
def test_tiny_parity_with_diffusers_from_single_file(tiny_sd1, which, tmp_path):
    model = tiny_sd1 if which == "sd1" else tiny_sdxl_distinct()
    path = save_single_file(model, tmp_path / f"{which}.safetensors")
    folder = config_folder_for(model, tmp_path / "config")
    ours = load_model(path, dtype=torch.float32, cache_dir=tmp_path)
    theirs = pipeline_as_model(diffusers_pipeline(path, folder, which == "sdxl"), which == "sdxl")
    assert_parity(component_outputs(ours), component_outputs(theirs))
    assert_parity(component_outputs(ours), component_outputs(model))


def _randomize_(module: torch.nn.Module, generator: torch.Generator, dtype: torch.dtype) -> None:
    """Assign small seeded random weights to an empty (meta) module (norm scales around 1)."""
    state = {}
    for name, p in module.state_dict().items():
        noise = torch.randn(p.shape, generator=generator) * 0.02
        state[name] = (noise + 1.0 if name.endswith("weight") and p.ndim == 1 else noise).to(dtype)
        del noise
    module.load_state_dict(state, strict=True, assign=True)


def full_size_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0) -> StableDiffusionModel:
    """A full-size architecture from its shipped config with seeded random weights (empty init, then fill)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdstudio.families.sd.architectures import component_config

    arch = ARCHITECTURES[name]
    classes = {"CLIPTextModel": CLIPTextModel, "CLIPTextModelWithProjection": CLIPTextModelWithProjection}
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(component_config(arch, "unet"))
        vae = AutoencoderKL.from_config(component_config(arch, "vae"))
        texts = [
            classes[spec.class_name](CLIPTextConfig.from_dict(component_config(arch, spec.subfolder)))
            for spec in arch.text_encoders
        ]
    g = torch.Generator().manual_seed(seed)
    for module in (unet, vae, *texts):
        _randomize_(module, g, dtype)
    tokenizers = [clip_tokenizer(pad_token=spec.pad_token) for spec in arch.text_encoders]
    scheduler = component_config(arch, "scheduler")
    return StableDiffusionModel(
        f"{name}-random", arch.model_arch, unet, vae, texts, tokenizers, scheduler
    ).eval()


def full_size_parity(name: str, tmp_path, dtype: torch.dtype) -> int:
    """Write a random full-size model with our converter (fp16 file); compare both loaders' outputs."""
    model = full_size_model(name, torch.float16)
    path = save_single_file(model, tmp_path / f"{name}-random.safetensors", half=True)
    expected_params = sum(p.numel() for p in model.unet.parameters())
    del model
    gc.collect()
    folder = materialize_config_folder(ARCHITECTURES[name], tmp_path / "config")
    ours = load_model(path, dtype=dtype, cache_dir=tmp_path)
    assert ours.arch == ARCHITECTURES[name].model_arch
    assert sum(p.numel() for p in ours.unet.parameters()) == expected_params
    ours_out = component_outputs(ours)
    del ours
    gc.collect()
    pipe = diffusers_pipeline(path, folder, sdxl=name == "sdxl", dtype=dtype)
    theirs_out = component_outputs(pipeline_as_model(pipe, sdxl=name == "sdxl"))
    del pipe
    gc.collect()
    assert all(torch.isfinite(v.float()).all() for v in ours_out.values())
    assert_parity(ours_out, theirs_out)
    return expected_params


@pytest.mark.slow
def test_full_size_sd15_parity_with_diffusers(tmp_path):
    """Full SD 1.5 (UNet 859.5 M params) in fp32: ~40 s, ~7.5 GiB peak here."""
    assert full_size_parity("sd1", tmp_path, torch.float32) == 859_520_964  # the published SD 1.x UNet size


def _total_ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@pytest.mark.slow
@pytest.mark.skipif(_total_ram_gib() < 48, reason="full-size SDXL needs ~30 GiB; run on a bigger machine")
def test_full_size_sdxl_parity_with_diffusers(tmp_path):
    """Full SDXL base (3.5 B params) in bf16 through both loaders."""
    full_size_parity("sdxl", tmp_path, torch.bfloat16)
