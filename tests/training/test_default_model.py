"""The shipped default model: layout and size, loads like any SD folder, reproduces a golden image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sdstudio.training.export import folder_size

MODEL = Path(__file__).resolve().parents[2] / "src" / "sdstudio" / "assets" / "default-model"
GOLDEN = Path(__file__).parent / "golden" / "default_cat_face_seed1_ddim10.png"
PROMPT, SEED, STEPS = "cat face", 1, 10


def test_layout_size_and_precision():
    index = json.loads((MODEL / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (MODEL / part).is_dir(), part
    assert folder_size(MODEL) <= 50_000_000
    from safetensors import safe_open

    with safe_open(str(MODEL / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    vae = json.loads((MODEL / "vae" / "config.json").read_text())
    assert len(vae["block_out_channels"]) == 3 and vae["latent_channels"] == 4 and vae["sample_size"] == 64


def test_loads_through_sdstudio_loader_and_generates():
    from sdstudio.config import GenerationRequest
    from sdstudio.models.loader import load_model
    from sdstudio.pipelines import txt2img

    model = load_model(None, dtype=torch.float32)
    assert model.arch == "sd1" and model.vae_scale_factor == 4
    req = GenerationRequest(
        prompt=PROMPT, width=64, height=64, steps=4, seed=SEED, sampler_name="Euler", cfg_scale=5
    )
    image = txt2img(model, req)[0].image
    arr = np.asarray(image)
    assert image.size == (64, 64) and np.isfinite(arr).all() and arr.std() > 10  # not a flat image


def _generate() -> np.ndarray:
    from sdstudio.training.evaluate import generate, load_components

    comp = load_components(MODEL)
    x = generate(comp, [PROMPT], [SEED], steps=STEPS, guidance=5.0)  # (1, 3, 64, 64)
    return ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def test_golden_image():
    arr = _generate()
    assert arr.shape == (64, 64, 3)
    golden = np.asarray(Image.open(GOLDEN).convert("RGB")).astype(np.int16)
    diff = np.abs(arr.astype(np.int16) - golden)
    # fp32 on any x86 CPU: tiny float differences only (a changed model or sampler moves far more)
    assert diff.mean() < 1.0 and diff.max() <= 16, (diff.mean(), diff.max())


if __name__ == "__main__":  # refresh after retraining: python3 tests/training/test_default_model.py
    GOLDEN.parent.mkdir(exist_ok=True)
    Image.fromarray(_generate()).save(GOLDEN)
