"""Tiny random-weight Stable Diffusion models (diffusers' testing style) for tests and demos.

Each builder returns a :class:`StableDiffusionModel` with the same structure as the full-size
architecture (SD 1.x, SD 2.x eps / v, SDXL, 9-channel inpainting) but a few hundred thousand
parameters, so every sampler and pipeline runs in well under a second on a CPU.
"""

from __future__ import annotations

import torch

from sdstudio.families.sd.tokenizer import clip_tokenizer
from sdstudio.models.sdmodel import StableDiffusionModel

SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "timestep_spacing": "leading",
}


def _text_encoder(hidden: int, with_projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=hidden,
        hidden_act="quick_gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config).eval()


def _vae(seed: int = 0, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
    ).eval()


def _unet(seed: int = 0, in_channels: int = 4, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = {
        "sample_size": 16,
        "in_channels": in_channels,
        "out_channels": 4,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 4,
        "norm_num_groups": 8,
    }
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs).eval()


def tiny_sd1(seed: int = 0, inpainting: bool = False) -> StableDiffusionModel:
    """Tiny SD 1.x: one CLIP text encoder (32-d), eps prediction, 4-channel latents at 1/2 size."""
    return StableDiffusionModel(
        name="tiny-sd1-inpainting" if inpainting else "tiny-sd1",
        arch="sd1",
        unet=_unet(seed, in_channels=9 if inpainting else 4),
        vae=_vae(seed),
        text_encoders=[_text_encoder(32, seed=seed)],
        tokenizers=[clip_tokenizer()],
        scheduler_config=dict(SD_SCHEDULER),
    ).eval()


def tiny_sd2(seed: int = 0, v_prediction: bool = False) -> StableDiffusionModel:
    """Tiny SD 2.x: linear-projection transformer blocks, 64-d context; v-prediction optional."""
    sched = dict(SD_SCHEDULER, prediction_type="v_prediction" if v_prediction else "epsilon")
    return StableDiffusionModel(
        name="tiny-sd2-v" if v_prediction else "tiny-sd2",
        arch="sd2-v" if v_prediction else "sd2",
        unet=_unet(seed, cross_attention_dim=64, use_linear_projection=True, attention_head_dim=(2, 4)),
        vae=_vae(seed),
        text_encoders=[_text_encoder(64, seed=seed)],
        tokenizers=[clip_tokenizer(pad_token="!")],
        scheduler_config=sched,
    ).eval()


def tiny_sdxl(seed: int = 0) -> StableDiffusionModel:
    """Tiny SDXL: two text encoders (32-d + 32-d projected), text_time added conditioning."""
    unet = _unet(
        seed,
        cross_attention_dim=64,
        use_linear_projection=True,
        attention_head_dim=(2, 4),
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    return StableDiffusionModel(
        name="tiny-sdxl",
        arch="sdxl",
        unet=unet,
        vae=_vae(seed, scaling_factor=0.13025),
        text_encoders=[_text_encoder(32, seed=seed), _text_encoder(32, with_projection=True, seed=seed + 1)],
        tokenizers=[clip_tokenizer(), clip_tokenizer(pad_token="!")],
        scheduler_config=dict(SD_SCHEDULER),
    ).eval()


TINY_BUILDERS = {"sd1": tiny_sd1, "sd2": tiny_sd2, "sdxl": tiny_sdxl}
