"""Tiny VAE (TAESD): shapes, the shipped one, fast mode's decode, ``sdstudio train taesd``, bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio import GenerationRequest, txt2img
from sdstudio.errors import SDStudioError
from sdstudio.models.loader import DEFAULT_MODEL_DIR, attach_tiny_vae, load_model
from sdstudio.models.save import save_diffusers
from sdstudio.models.tiny_vae import (
    TINY_VAE_FOLDER,
    build_tiny_vae,
    load_tiny_vae,
    save_tiny_vae,
    tiny_decode,
    tiny_encode,
    tiny_vae_for,
    tiny_vae_scale_factor,
)
from sdstudio.pipelines.components import decode_latents, decode_latents_tiny, preview_image
from sdstudio.training.loop import CHECKPOINT

SHIPPED = DEFAULT_MODEL_DIR / TINY_VAE_FOLDER
# mean |tiny - full| of fast-mode images on the embedded model, pixels in [0, 1]: measured 0.023 for
# REQ (0.022-0.029 over four prompts at 12 steps; 0.027 on bench/tiny_vae.py's 16 held-out latents;
# unconverged latents decode worse: 0.079 at 4 steps); about 2x margin
FAST_TINY_MEAN_ABS_BOUND = 0.05
REQ = GenerationRequest(
    prompt="cat face", width=64, height=64, steps=12, sampler_name="DPM++ 2M", cfg_scale=5, seed=5
)


def pixels(items) -> np.ndarray:
    return np.stack([np.asarray(i.image, dtype=np.float32) / 255 for i in items])


@pytest.fixture(scope="module")
def embedded():
    return load_model(None, dtype=torch.float32)


@pytest.fixture
def sd1_with_tiny(tiny_sd1):
    """tiny_sd1 with a small random tiny VAE attached for one test."""
    tiny_sd1.tiny_vae = tiny_vae_for(tiny_sd1, channels=8, blocks=1).eval()
    yield tiny_sd1
    tiny_sd1.tiny_vae = None


@pytest.mark.parametrize(("factor", "latent_hw"), [(8, 4), (4, 16), (2, 8)])
def test_tiny_vae_sizes_follow_the_vae_factor(factor, latent_hw):
    """SD (f 8: 4 stages, TAESD's layout), the embedded model (f 4) and the tiny test models (f 2)."""
    tiny = build_tiny_vae(4, factor, channels=8, blocks=1).eval()
    assert tiny_vae_scale_factor(tiny) == factor
    assert len(tiny.config.decoder_block_out_channels) == {8: 4, 4: 3, 2: 2}[factor]
    with torch.no_grad():
        images = tiny_decode(tiny, torch.randn(2, 4, latent_hw, latent_hw))
        latents = tiny_encode(tiny, images.clamp(-1, 1))
    assert images.shape == (2, 3, latent_hw * factor, latent_hw * factor)
    assert latents.shape == (2, 4, latent_hw, latent_hw)
    with pytest.raises(SDStudioError, match="power-of-two"):
        build_tiny_vae(4, 6)


def test_decode_latents_tiny_has_the_full_decoders_shape_and_range(sd1_with_tiny):
    latents = torch.randn(2, 4, 8, 8) * 3
    full, tiny = decode_latents(sd1_with_tiny, latents), decode_latents_tiny(sd1_with_tiny, latents)
    assert tiny.shape == full.shape == (2, 3, 16, 16) and tiny.dtype == torch.float32
    assert 0.0 <= float(tiny.min()) and float(tiny.max()) <= 1.0


def test_shipped_tiny_vae_loads_offline_with_the_embedded_model(embedded):
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2_000_000
    assert json.loads((SHIPPED / "config.json").read_text())["_class_name"] == "AutoencoderTiny"
    tiny = embedded.tiny_vae
    assert tiny is not None and not tiny.training
    assert (tiny.config.latent_channels, tiny_vae_scale_factor(tiny)) == (4, 4)
    assert next(tiny.parameters()).dtype == embedded.dtype


def test_fast_mode_decodes_with_the_tiny_vae_within_the_bound(embedded):
    """Same latents (fast mode's DeepCache run), decoded by the tiny VAE or, without one, the full VAE."""
    tiny = embedded.tiny_vae
    fast = txt2img(embedded, REQ.replace(fast=True, batch_size=2))
    embedded.tiny_vae = None
    try:
        fast_full = txt2img(embedded, REQ.replace(fast=True, batch_size=2))
    finally:
        embedded.tiny_vae = tiny
    a, b = pixels(fast), pixels(fast_full)
    assert not np.array_equal(a, b)
    assert float(np.abs(a - b).mean()) < FAST_TINY_MEAN_ABS_BOUND
    assert "VAE Decoder: TAESD" in fast[0].infotext and "VAE Decoder" not in fast_full[0].infotext
    assert fast[0].params["VAE Decoder"] == "TAESD" and "Fast: True" in fast[0].infotext


def test_default_path_ignores_the_tiny_vae(sd1_with_tiny):
    """Without fast the full VAE decodes, bit-identically to a model without a tiny VAE."""
    with_tiny = txt2img(sd1_with_tiny, REQ.replace(width=16, height=16, steps=3))
    tiny = sd1_with_tiny.tiny_vae
    sd1_with_tiny.tiny_vae = None
    plain = txt2img(sd1_with_tiny, REQ.replace(width=16, height=16, steps=3))
    sd1_with_tiny.tiny_vae = tiny
    assert np.array_equal(pixels(with_tiny), pixels(plain))
    assert with_tiny[0].infotext == plain[0].infotext and "VAE Decoder" not in plain[0].infotext


def test_img2img_fast_uses_the_tiny_vae(sd1_with_tiny):
    from sdstudio.pipelines import img2img

    init = [Image.new("RGB", (16, 16), (200, 40, 40))]
    req = REQ.replace(width=16, height=16, steps=4, denoising_strength=0.5)
    assert "VAE Decoder: TAESD" in img2img(sd1_with_tiny, req.replace(fast=True), init)[0].infotext
    assert "VAE Decoder" not in img2img(sd1_with_tiny, req, init)[0].infotext


def test_previews_use_the_tiny_vae_where_the_latent_space_has_no_colour_map(embedded):
    latents = torch.randn(1, 4, 16, 16)
    assert embedded.latent_format.rgb_factors is None
    expected = (decode_latents_tiny(embedded, latents)[0].permute(1, 2, 0).numpy() * 255 + 0.5).astype(
        "uint8"
    )
    assert np.array_equal(np.asarray(preview_image(embedded, latents)), expected)


def test_model_folder_taesd_is_attached_and_explicit_path_wins(tiny_sd1, tmp_path):
    folder = save_diffusers(tiny_sd1, tmp_path / "model")
    save_tiny_vae(tiny_vae_for(tiny_sd1, channels=8, blocks=1, seed=1), folder / TINY_VAE_FOLDER)
    other = save_tiny_vae(tiny_vae_for(tiny_sd1, channels=4, blocks=1, seed=2), tmp_path / "other", half=True)
    assert tuple(load_model(folder).tiny_vae.config.decoder_block_out_channels) == (8, 8)
    model = load_model(folder, tiny_vae_path=other, precision="fp32")
    assert tuple(model.tiny_vae.config.decoder_block_out_channels) == (4, 4)
    assert next(model.tiny_vae.parameters()).dtype == torch.float32  # fp16 file, fp32 model
    bf16 = load_model(folder, tiny_vae_path=other, precision="bf16")
    assert next(bf16.tiny_vae.parameters()).dtype == torch.bfloat16  # follows the model's dtype
    assert load_model(save_diffusers(tiny_sd1, tmp_path / "bare")).tiny_vae is None


def test_a_servers_tiny_vae_serves_models_without_their_own_and_skips_misfits(tiny_sd1, tmp_path, caplog):
    """``serve --tiny-vae`` (``default_tiny_vae_path``): used where a model has no taesd/ of its
    own, never over it, and skipped with a warning where it does not decode the model's latents."""
    from sdstudio.models.save import save_single_file

    shared = save_tiny_vae(tiny_vae_for(tiny_sd1, channels=4, blocks=1, seed=2), tmp_path / "shared")
    single = save_single_file(tiny_sd1, tmp_path / "tiny.safetensors")
    model = load_model(single, default_tiny_vae_path=shared, precision="fp32")
    assert tuple(model.tiny_vae.config.decoder_block_out_channels) == (4, 4)
    folder = save_diffusers(tiny_sd1, tmp_path / "model")
    save_tiny_vae(tiny_vae_for(tiny_sd1, channels=8, blocks=1, seed=1), folder / TINY_VAE_FOLDER)
    own = load_model(folder, default_tiny_vae_path=shared, precision="fp32")
    assert tuple(own.tiny_vae.config.decoder_block_out_channels) == (8, 8)  # its own wins
    misfit = save_tiny_vae(build_tiny_vae(16, 8, 4, 1), tmp_path / "sd3-like")  # 16 latent channels
    with caplog.at_level("WARNING"):
        plain = load_model(single, default_tiny_vae_path=misfit, precision="fp32")
    assert plain.tiny_vae is None and "full VAE" in caplog.text
    with pytest.raises(SDStudioError):  # asked for by name (txt2img --tiny-vae): an error
        load_model(single, tiny_vae_path=misfit, precision="fp32")


def test_bad_tiny_vae_paths_raise_clear_errors(tiny_sd1, tmp_path):
    with pytest.raises(SDStudioError, match="tiny VAE not found"):
        load_tiny_vae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SDStudioError, match="has no config.json"):
        load_tiny_vae(tmp_path / "empty")
    tiny_sd1.vae.save_pretrained(tmp_path / "kl")
    with pytest.raises(SDStudioError, match="not a tiny VAE"):
        load_tiny_vae(tmp_path / "kl")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"_class_name": "AutoencoderTiny"}')
    with pytest.raises(SDStudioError, match="cannot load the tiny VAE"):
        load_tiny_vae(tmp_path / "broken")
    wrong = save_tiny_vae(build_tiny_vae(4, 4, channels=4, blocks=1), tmp_path / "f4")
    with pytest.raises(SDStudioError, match="factor 2"):
        attach_tiny_vae(tiny_sd1, wrong)  # tiny_sd1's VAE downscales 2x
    assert tiny_sd1.tiny_vae is None


# ----------------------------------------------------------------------------- train taesd


@pytest.fixture
def tiny_model_and_data(tiny_sd1, tmp_path):
    from sdstudio.training.data import synthetic_shapes

    model = save_diffusers(tiny_sd1, tmp_path / "model")
    (tmp_path / "data").mkdir()
    for i, img in enumerate(synthetic_shapes(8, size=16).images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / "data" / f"{i}.png")
    return model, tmp_path / "data"


COMMON = ["--batch-size", "4", "--sample-every", "0", "--no-progress", "--cpu", "--warmup-steps", "1"]


def test_train_taesd_cli_runs_resumes_and_exports(tiny_model_and_data, tmp_path, capsys):
    from sdstudio.cli import main

    model, data = tiny_model_and_data
    out = tmp_path / "run"
    args = ["train", "taesd", "--model", str(model), "--data", str(data), "--out", str(out),
            "--channels", "8", "--blocks", "1", *COMMON]  # fmt: skip
    assert main([*args, "--steps", "2"]) == 0
    first = torch.load(out / CHECKPOINT, weights_only=True)
    assert main([*args, "--steps", "4", "--resume", "--half"]) == 0
    ckpt = torch.load(out / CHECKPOINT, weights_only=True)
    assert (first["step"], ckpt["step"], len(ckpt["losses"])) == (2, 4, 4)
    assert ckpt["losses"][:2] == first["losses"]  # continued, not restarted
    assert set(ckpt["model"]) == {f"tiny.{k}" for k in build_tiny_vae(4, 2, 8, 1).state_dict()}  # no teacher
    assert "taesd: 4 steps" in capsys.readouterr().out
    loaded = load_model(model, tiny_vae_path=out / "final" / TINY_VAE_FOLDER)
    assert tiny_vae_scale_factor(loaded.tiny_vae) == 2


def test_train_taesd_resume_is_bit_exact(tiny_sd1, tmp_path):
    from sdstudio.training.data import synthetic_shapes
    from sdstudio.training.loop import LoopConfig
    from sdstudio.training.taesd import TAESDConfig, train_taesd

    data = synthetic_shapes(8, size=16)
    cfg = TAESDConfig(channels=8, blocks=1)

    def run(name, steps, resume=False):
        loop = LoopConfig(out_dir=tmp_path / name, steps=steps, batch_size=4, lr=2e-3, warmup_steps=1,
                          sample_every=0, progress=False, cpu=True, resume=resume)  # fmt: skip
        result = train_taesd(tiny_sd1, data, loop, cfg)
        return result, torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["model"]

    straight, m1 = run("straight", 4)
    run("split", 2)
    _, m2 = run("split", 4, resume=True)
    assert all(torch.equal(m1[k], m2[k]) for k in m1)
    assert straight.losses[-1] < straight.losses[0]


def test_train_taesd_cli_errors(tiny_model_and_data, tmp_path, capsys):
    from sdstudio.cli import main

    model, _ = tiny_model_and_data
    base = ["train", "taesd", "--model", str(model), "--out", str(tmp_path / "o"), *COMMON]
    assert main([*base, "--data", str(tmp_path / "missing")]) == 2
    assert "data folder not found" in capsys.readouterr().err
    assert main([*base, "--generate", "0"]) == 2  # no data, no card images, nothing to generate
    assert "--generate" in capsys.readouterr().err
    assert main(["train", "taesd", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "model not found" in capsys.readouterr().err
