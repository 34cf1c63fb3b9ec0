"""Regenerate the shipped diffusers config folders in src/sdstudio/families/sd/assets/configs/.

The values are those of the public diffusers repositories the single-file loaders default to
(diffusers.loaders.single_file_utils.DIFFUSERS_DEFAULT_PIPELINE_PATHS):

  sd1           runwayml / stable-diffusion-v1-5            (unet, vae, text_encoder, scheduler)
  sd1-inpaint   runwayml / stable-diffusion-inpainting      (sd1 with a 9-channel UNet)
  sd2           stabilityai / stable-diffusion-2-1-base      (512 px, epsilon)
  sd2-v         stabilityai / stable-diffusion-2-1           (768 px, v-prediction, upcast attention)
  sd2-inpaint   stabilityai / stable-diffusion-2-inpainting  (sd2 base with a 9-channel UNet)
  sdxl          stabilityai / stable-diffusion-xl-base-1.0
  sdxl-inpaint  diffusers / stable-diffusion-xl-1.0-inpainting-0.1 (sdxl with a 9-channel UNet)

Only JSON is written; the CLIP tokenizer vocabulary ships once in families/sd/assets/tokenizer and is
copied in by ``sdstudio.families.sd.architectures.materialize_config_folder`` when diffusers needs a
complete folder. Run: ``python3 scripts/build_model_configs.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "sdstudio" / "families" / "sd" / "assets" / "configs"

DOWN4 = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
UP4 = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

UNET_SD1 = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": DOWN4,
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": UP4,
}
UNET_SD2 = {
    **UNET_SD1,
    "_diffusers_version": "0.10.0.dev0",
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "dual_cross_attention": False,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "use_linear_projection": True,
}
UNET_SD2_V = {**UNET_SD2, "sample_size": 96, "upcast_attention": True}
UNET_SDXL = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.19.0.dev0",
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_dim": 2048,
    "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "sample_size": 128,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "upcast_attention": None,
    "use_linear_projection": True,
}

VAE_SD = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.6.0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}
VAE_SD2 = {**VAE_SD, "_diffusers_version": "0.10.0.dev0", "sample_size": 768}  # as in 2-1-base and 2-1
VAE_SDXL = {
    **VAE_SD,
    "_diffusers_version": "0.20.0.dev0",
    "force_upcast": True,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
}

CLIP_L = {
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}
# OpenCLIP ViT-H/14 text tower as diffusers stores it for SD 2.x: 23 of its 24 layers (SD 2 uses the
# penultimate layer, so diffusers drops resblocks.23), GELU, no projection.
OPEN_CLIP_H = {
    **CLIP_L,
    "hidden_act": "gelu",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_attention_heads": 16,
    "num_hidden_layers": 23,
    "projection_dim": 512,
}
# OpenCLIP ViT-bigG/14 text tower (SDXL text_encoder_2), with its text projection.
OPEN_CLIP_BIGG = {
    **CLIP_L,
    "architectures": ["CLIPTextModelWithProjection"],
    "hidden_act": "gelu",
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
}

SCHED_BASE = {
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}
SCHED_SD1 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", **SCHED_BASE}
SCHED_SD2_V = {
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    **SCHED_BASE,
    "prediction_type": "v_prediction",
}
SCHED_SD2 = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.10.0.dev0", **SCHED_BASE}
SCHED_SDXL = {
    "_class_name": "EulerDiscreteScheduler",
    "_diffusers_version": "0.19.0.dev0",
    **SCHED_BASE,
    "interpolation_type": "linear",
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "use_karras_sigmas": False,
}


def tokenizer_files(pad_token: str) -> dict[str, dict]:
    """tokenizer_config.json and special_tokens_map.json for a CLIP tokenizer with ``pad_token``."""
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
    }
    config = {**special, "model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer"}
    return {"tokenizer_config.json": config, "special_tokens_map.json": special}


def model_index(pipeline: str, scheduler: str, sdxl: bool) -> dict:
    index = {
        "_class_name": pipeline,
        "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if sdxl:
        index |= {
            "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
            "tokenizer_2": ["transformers", "CLIPTokenizer"],
            "force_zeros_for_empty_prompt": True,
        }
    else:
        index |= {
            "safety_checker": [None, None],
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
        }
    return index


def folder(unet, vae, scheduler, texts, pipeline="StableDiffusionPipeline") -> dict[str, dict]:
    """All files of one config folder: relative path -> JSON content."""
    files = {
        "model_index.json": model_index(pipeline, scheduler["_class_name"], len(texts) == 2),
        "unet/config.json": unet,
        "vae/config.json": vae,
        "scheduler/scheduler_config.json": scheduler,
    }
    for i, (config, pad) in enumerate(texts):
        suffix = "" if i == 0 else f"_{i + 1}"
        files[f"text_encoder{suffix}/config.json"] = config
        for name, content in tokenizer_files(pad).items():
            files[f"tokenizer{suffix}/{name}"] = content
    return files


def inpaint(unet: dict) -> dict:
    return {**unet, "in_channels": 9}


FOLDERS = {
    "sd1": folder(UNET_SD1, VAE_SD, SCHED_SD1, [(CLIP_L, "<|endoftext|>")]),
    "sd1-inpaint": folder(inpaint(UNET_SD1), VAE_SD, SCHED_SD1, [(CLIP_L, "<|endoftext|>")]),
    "sd2": folder(UNET_SD2, VAE_SD2, SCHED_SD2, [(OPEN_CLIP_H, "!")]),
    "sd2-v": folder(UNET_SD2_V, VAE_SD2, SCHED_SD2_V, [(OPEN_CLIP_H, "!")]),
    "sd2-inpaint": folder(inpaint(UNET_SD2), VAE_SD, SCHED_SD2, [(OPEN_CLIP_H, "!")]),
    "sdxl": folder(
        UNET_SDXL,
        VAE_SDXL,
        SCHED_SDXL,
        [(CLIP_L, "<|endoftext|>"), (OPEN_CLIP_BIGG, "!")],
        "StableDiffusionXLPipeline",
    ),
    "sdxl-inpaint": folder(
        inpaint(UNET_SDXL),
        VAE_SDXL,
        SCHED_SDXL,
        [(CLIP_L, "<|endoftext|>"), (OPEN_CLIP_BIGG, "!")],
        "StableDiffusionXLInpaintPipeline",
    ),
}


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    for name, files in FOLDERS.items():
        for rel, content in files.items():
            path = OUT / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(FOLDERS)} config folders to {OUT}")


if __name__ == "__main__":
    main()
