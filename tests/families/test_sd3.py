"""SD 3 on the seam: a tiny random-weight SD3 diffusers folder loads through the family registry and
samples what diffusers' own ``StableDiffusion3Pipeline`` samples from the same weights and noise
(the flow-matching parameterisation, the shifted schedule, the CLIP-L/G + T5 conditioning)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.errors import SDStudioError
from sdstudio.families import loader_for
from sdstudio.families.sd.tokenizer import clip_tokenizer
from sdstudio.sampling import ImageNoise


def _tiny_pipeline():
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip

    def clip(seed: int):
        torch.manual_seed(seed)
        config = CLIPTextConfig(bos_token_id=49406, eos_token_id=49407, pad_token_id=1, hidden_size=32,
                                intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                vocab_size=49408, projection_dim=32, hidden_act="gelu")  # fmt: skip
        return CLIPTextModelWithProjection(config).eval()

    torch.manual_seed(1)
    vae = AutoencoderKL(block_out_channels=(8, 8), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=4, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                        use_post_quant_conv=False)  # fmt: skip
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(2), tokenizer=clip_tokenizer(), text_encoder_2=clip(3),
        tokenizer_2=clip_tokenizer(pad_token="!"), text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3") / "tiny-sd3"
    _tiny_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sd3(sd3_folder):
    from sdstudio.models.loader import load_model

    return load_model(sd3_folder, backend="torch", dtype=torch.float32)


def test_the_registry_reads_the_folder_as_sd3(sd3, sd3_folder):
    assert loader_for(sd3_folder).name == "sd3" and sd3.arch == "sd3"
    assert sd3.native_size == 32 and sd3.latent_channels == 4 and sd3.model_hash  # transformer weights


@pytest.mark.parametrize("cfg", [1.0, 4.5])
def test_matches_diffusers_stable_diffusion_3_pipeline(sd3, sd3_folder, cfg):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(
        sd3_folder,
        local_files_only=True,
        text_encoder_3=None,
        tokenizer_3=None,
        image_encoder=None,
        feature_extractor=None,
    )
    request = GenerationRequest(prompt="a red cube on a table", width=32, height=32, steps=6, seed=3,
                                sampler_name="Euler", cfg_scale=cfg)  # fmt: skip
    ours = np.asarray(txt2img(sd3, request)[0].image).astype(np.float64)
    latents = ImageNoise((4, 16, 16), [3]).initial()  # the seed's noise (32 px / VAE factor 2), as ours
    ref = pipe(prompt="a red cube on a table", negative_prompt="", num_inference_steps=6, guidance_scale=cfg,
               latents=latents, height=32, width=32, output_type="np").images[0] * 255  # fmt: skip
    diff = np.abs(ours - ref)
    assert diff.max() <= 2.0 and diff.mean() < 0.6, (diff.max(), diff.mean())  # measured: max 0.5, mean 0.25


def test_flow_samplers_run_and_sde_samplers_are_refused(sd3):
    base = GenerationRequest(prompt="a cube", width=32, height=32, steps=3, seed=1, cfg_scale=3.0)
    for sampler in ("Euler", "Heun", "DPM++ 2M", "LMS"):
        image = np.asarray(txt2img(sd3, base.replace(sampler_name=sampler))[0].image)
        assert image.shape == (32, 32, 3)
    with pytest.raises(SDStudioError, match="flow-matching"):
        txt2img(sd3, base.replace(sampler_name="Euler a"))


def test_img2img_noises_along_the_flow_path(sd3):
    from PIL import Image

    from sdstudio.pipelines import img2img

    init = Image.new("RGB", (32, 32), (40, 90, 200))
    request = GenerationRequest(prompt="a cube", width=32, height=32, steps=8, seed=1, sampler_name="Euler",
                                denoising_strength=0.05, cfg_scale=1.0)  # fmt: skip
    out = np.asarray(img2img(sd3, request, [init])[0].image).astype(int)
    # a small strength keeps the (VAE round-tripped) picture: flow noise scaling, not VE
    from sdstudio.pipelines.components import decode_latents, encode_images, from_pil, to_pil

    round_trip = np.asarray(to_pil(decode_latents(sd3, encode_images(sd3, from_pil([init]))))[0]).astype(int)
    assert np.abs(out - round_trip).mean() < 12


def test_a1111_api_generates_from_an_sd3_folder_in_the_models_folder(sd3_folder, tmp_path):
    import json

    from tests.families.conftest import studio_with_model
    from tests.server.conftest import decode_png

    with studio_with_model(tmp_path, sd3_folder, "tiny-sd3") as client:
        body = {"prompt": "a cube", "width": 32, "height": 32, "steps": 3, "seed": 5, "sampler_name": "Euler",
                "override_settings": {"sd_model_checkpoint": "tiny-sd3"}}  # fmt: skip
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        assert decode_png(r.json()["images"][0]).size == (32, 32)
        assert json.loads(r.json()["info"])["sd_model_name"] == "tiny-sd3"
        refused = client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "DPM++ SDE"})
        assert refused.status_code == 422 and "flow-matching" in refused.text


def test_defaults_follow_the_family_before_and_after_loading(sd3, sd3_folder, tmp_path):
    from sdstudio.runtime.manager import ModelManager

    assert (sd3.defaults.sampler, sd3.defaults.steps, sd3.defaults.cfg_scale) == ("Euler", 28, 7.0)
    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    import shutil

    shutil.copytree(sd3_folder, models / "tiny-sd3")
    manager = ModelManager(tmp_path / "models", backend="torch")
    listed = manager.defaults(manager.find("tiny-sd3"))  # read from the folder's configs, not loaded
    assert (listed.size, listed.sampler, listed.steps) == (32, "Euler", 28)
