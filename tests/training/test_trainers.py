"""Each trainer learns on a tiny synthetic set; resume is bit-exact; exports load back identically."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from sdstudio.errors import SDStudioError
from sdstudio.training.data import synthetic_shapes
from sdstudio.training.ddpm import DDPMConfig, train_ddpm
from sdstudio.training.ldm import LDMConfig, train_ldm
from sdstudio.training.loop import CHECKPOINT, LoopConfig
from sdstudio.training.miniclip import MiniCLIPConfig, load_miniclip, tokenize, train_clip
from sdstudio.training.vae import VAEConfig, build_vae, train_vae

TINY_VAE = VAEConfig(block_out_channels=(8, 16), norm_num_groups=4, image_size=16, kl_weight=1e-4)
TINY_CLIP = MiniCLIPConfig(hidden=32, layers=1, heads=2, embed_dim=16, image_channels=(8, 16), shift=1)
TINY_LDM = LDMConfig(
    block_out_channels=(16, 32),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    norm_num_groups=8,
    attention_heads=2,
    preview_prompts=("red circle", "blue square"),
    preview_steps=2,
    ema_decay=0.9,
)
TINY_DDPM = DDPMConfig(
    image_size=16,
    block_out_channels=(16, 32),
    layers_per_block=1,
    norm_num_groups=8,
    preview_steps=2,
    ema_decay=0.9,
    text_hidden=16,
)


def loop(tmp_path, name: str, steps: int, **kw) -> LoopConfig:
    base = {"steps": steps, "batch_size": 8, "lr": 2e-3, "warmup_steps": 1, "sample_every": 0}
    return LoopConfig(out_dir=tmp_path / name, **{**base, "progress": False, "cpu": True, **kw})


def went_down(losses: list[float], k: int = 4) -> bool:
    return sum(losses[-k:]) / k < 0.8 * sum(losses[:k]) / k


@pytest.fixture(scope="module")
def shapes():
    return synthetic_shapes(16, size=16, seed=0)


@pytest.fixture(scope="module")
def frozen(tmp_path_factory, shapes):
    """A briefly trained tiny VAE and mini-CLIP text encoder, as the LDM stage gets them."""
    from transformers import CLIPTextModel

    from sdstudio.training.miniclip import MiniCLIP

    torch.manual_seed(0)
    vae = build_vae(TINY_VAE).eval()
    text = MiniCLIP(TINY_CLIP).text_model.eval()
    assert isinstance(text, CLIPTextModel)
    return vae, text


def test_vae_learns_and_exports_scaling_factor(tmp_path, shapes):
    from diffusers import AutoencoderKL

    res = train_vae(shapes, loop(tmp_path, "vae", 16), TINY_VAE)
    assert res.steps == 16 and went_down(res.losses)
    vae = AutoencoderKL.from_pretrained(str(tmp_path / "vae" / "final" / "vae"))
    z = vae.encode(shapes.images[:8].float() / 127.5 - 1).latent_dist.mean
    assert z.shape == (8, 4, 8, 8)  # two levels: one 2x downsample
    scale = vae.config.scaling_factor
    assert scale != 0.18215 and 0.01 < scale < 100  # measured from the data, not SD's constant
    for name in ("loss.png", "samples.png", CHECKPOINT, "log.jsonl"):
        assert (tmp_path / "vae" / name).is_file(), name


def test_clip_learns_and_save_load_is_identical(tmp_path, shapes):
    res = train_clip(shapes, loop(tmp_path, "clip", 24, lr=3e-3), TINY_CLIP)
    assert went_down(res.losses)
    final = tmp_path / "clip" / "final"
    ckpt = torch.load(tmp_path / "clip" / CHECKPOINT, weights_only=True)
    from sdstudio.training.miniclip import MiniCLIP

    live = MiniCLIP(TINY_CLIP)
    live.load_state_dict(ckpt["model"])
    loaded = load_miniclip(final)
    ids, x = tokenize(["red circle", "blue square"]), shapes.images[:2].float() / 127.5 - 1
    with torch.no_grad():
        assert torch.equal(live.encode_text(ids), loaded.encode_text(ids))
        assert torch.equal(live.eval().encode_image(x), loaded.encode_image(x))


def test_ldm_learns(tmp_path, shapes, frozen):
    vae, text = frozen
    res = train_ldm(shapes, loop(tmp_path, "ldm", 30), vae, text, TINY_LDM)
    assert went_down(res.losses)
    assert (tmp_path / "ldm" / "final" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    sched = json.loads((tmp_path / "ldm" / "final" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "scaled_linear" and sched["prediction_type"] == "epsilon"


def _state(path):
    ckpt = torch.load(path / CHECKPOINT, weights_only=True)
    return ckpt["model"], ckpt["ema"]["shadow"], ckpt["step"]


def test_ldm_resume_is_bit_exact(tmp_path, shapes, frozen):
    vae, text = frozen
    train_ldm(shapes, loop(tmp_path, "straight", 6), vae, text, TINY_LDM)
    train_ldm(shapes, loop(tmp_path, "split", 3), vae, text, TINY_LDM)
    m3, _, s3 = _state(tmp_path / "split")
    train_ldm(shapes, loop(tmp_path, "split", 6, resume=True), vae, text, TINY_LDM)
    (m1, e1, s1), (m2, e2, s2) = _state(tmp_path / "straight"), _state(tmp_path / "split")
    assert (s3, s1, s2) == (3, 6, 6)
    assert m1.keys() == m2.keys() and all(torch.equal(m1[k], m2[k]) for k in m1)
    assert all(torch.equal(e1[k], e2[k]) for k in e1)
    assert any(not torch.equal(m3[k], m1[k]) for k in m1)  # the halfway state really was different


def test_resume_refuses_another_tasks_checkpoint(tmp_path, shapes):
    train_vae(shapes, loop(tmp_path, "x", 1), TINY_VAE)
    with pytest.raises(SDStudioError, match="checkpoint is for 'vae'"):
        train_clip(shapes, loop(tmp_path, "x", 2, resume=True), TINY_CLIP)


@pytest.mark.parametrize(
    "condition,prediction,schedule",
    [("none", "eps", "linear"), ("class", "v", "cosine"), ("text", "eps", "scaled_linear")],
)
def test_ddpm_learns(tmp_path, shapes, condition, prediction, schedule):
    cfg = replace(TINY_DDPM, condition=condition, prediction=prediction, schedule=schedule)
    res = train_ddpm(shapes, loop(tmp_path, "ddpm", 20), cfg)
    assert went_down(res.losses)
    final = tmp_path / "ddpm" / "final"
    index = json.loads((final / "model_index.json").read_text())
    assert index["_class_name"] == "DDPMPipeline"
    if condition == "class":
        classes = json.loads((final / "classes.json").read_text())
        assert classes["red circle"] == classes["a red circle"]


def test_ddpm_export_loads_with_diffusers_and_matches(tmp_path, shapes):
    from diffusers import DDPMScheduler, UNet2DModel

    res = train_ddpm(shapes, loop(tmp_path, "d", 2), TINY_DDPM)
    assert res.steps == 2
    unet = UNet2DModel.from_pretrained(str(tmp_path / "d" / "final" / "unet")).eval()
    DDPMScheduler.from_pretrained(str(tmp_path / "d" / "final" / "scheduler"))
    ema = torch.load(tmp_path / "d" / CHECKPOINT, weights_only=True)["ema"]["shadow"]
    ema_unet = {k[len("unet.") :]: v for k, v in ema.items() if k.startswith("unet.")}
    assert all(torch.equal(unet.state_dict()[k], ema_unet[k]) for k in ema_unet)  # exported = EMA weights


def test_bad_settings_are_sdstudio_errors(tmp_path, shapes):
    with pytest.raises(SDStudioError, match="condition"):
        train_ddpm(shapes, loop(tmp_path, "e", 1), replace(TINY_DDPM, condition="image"))
    with pytest.raises(SDStudioError, match="schedule"):
        train_ddpm(shapes, loop(tmp_path, "e", 1), replace(TINY_DDPM, schedule="quadratic"))
    with pytest.raises(SDStudioError, match="learning rate"):
        train_vae(shapes, loop(tmp_path, "e", 1, lr=0), TINY_VAE)


def test_bf16_autocast_on_cpu(tmp_path, shapes):
    res = train_vae(shapes, loop(tmp_path, "bf16", 2, mixed_precision="bf16"), TINY_VAE)
    assert res.steps == 2 and all(torch.isfinite(torch.tensor(res.losses)))


def test_time_budget_stops_and_saves(tmp_path, shapes):
    res = train_vae(shapes, loop(tmp_path, "budget", 1000, time_budget_s=0.0), TINY_VAE)
    assert res.steps == 0
    assert torch.load(tmp_path / "budget" / CHECKPOINT, weights_only=True)["step"] == 0
