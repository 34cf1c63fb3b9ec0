"""The second kind of family: the pixel-space DDPM ``sdstudio train ddpm`` writes, in the studio.

A model the user trained loads by path and from the models folder, and generates through the
library, the CLI and the A1111 API with every sampler. Its parameterisation is checked against
diffusers' own DDPM scheduler maths on the same weights.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.cli import main
from sdstudio.families import family_of, loader_for
from sdstudio.pipelines.components import ModelDenoiser
from sdstudio.prompts.encode import Conditioning
from sdstudio.sampling import list_samplers
from sdstudio.training.data import synthetic_shapes
from sdstudio.training.ddpm import DDPMConfig, train_ddpm
from sdstudio.training.loop import LoopConfig

TINY = DDPMConfig(image_size=16, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                  preview_steps=2, ema_decay=0.9)  # fmt: skip


def _train(tmp_path, name: str, **cfg) -> object:
    loop = LoopConfig(out_dir=tmp_path / name, steps=2, batch_size=8, lr=2e-3, warmup_steps=1, sample_every=0,
                      progress=False, cpu=True)  # fmt: skip
    train_ddpm(synthetic_shapes(16, size=16, seed=0), loop, replace(TINY, **cfg))
    return tmp_path / name / "final"


@pytest.fixture(scope="module")
def class_ddpm(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("ddpm"), "class", condition="class")


@pytest.fixture(scope="module")
def v_ddpm(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("ddpm"), "v", prediction="v", schedule="cosine")


def _load(path):
    from sdstudio.models.loader import load_model

    return load_model(path, backend="torch", dtype=torch.float32)


def test_registry_picks_the_pixel_family_and_loads_it(class_ddpm):
    assert loader_for(class_ddpm).name == "pixel-ddpm"
    model = _load(class_ddpm)
    assert model.arch == "pixel-ddpm" and model.vae is None and model.family is family_of("pixel-ddpm")
    assert model.native_size == 16 and model.latent_channels == 3 and model.vae_scale_factor == 1
    classes = json.loads((class_ddpm / "classes.json").read_text())
    assert model.extras["classes"] == classes


@pytest.mark.parametrize("path_fixture", ["class_ddpm", "v_ddpm"])
def test_denoiser_matches_diffusers_ddpm_maths(request, path_fixture):
    """D(x, sigma_t) on the VE-scaled x_t equals diffusers' x0 estimate at integer timestep t."""
    from diffusers import DDPMScheduler

    path = request.getfixturevalue(path_fixture)
    model = _load(path)
    sched = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    abar = sched.alphas_cumprod.double()
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(2, 3, 16, 16, generator=gen)
    t = torch.tensor([37, 612])
    cond = Conditioning(None, extra={"class_labels": torch.tensor([0, 1])} if model.extras["classes"] else {})
    with torch.no_grad():
        out = model.unet(x_t, t, class_labels=cond.extra.get("class_labels")).sample.double()
    a = abar[t].view(-1, 1, 1, 1)
    if sched.config.prediction_type == "epsilon":
        want = (x_t.double() - (1 - a).sqrt() * out) / a.sqrt()
    else:
        want = a.sqrt() * x_t.double() - (1 - a).sqrt() * out
    sigma = ((1 - abar[t]) / abar[t]).sqrt().float()
    with torch.no_grad():
        got = ModelDenoiser(model)(x_t / a.sqrt().float(), sigma, cond)
    torch.testing.assert_close(got.double(), want, atol=2e-4, rtol=1e-4)


def test_every_sampler_generates_and_repeats_exactly(class_ddpm):
    model = _load(class_ddpm)
    for sampler in [spec.name for spec in list_samplers()]:
        request = GenerationRequest(prompt="red circle", width=16, height=16, steps=3, seed=5,
                                    sampler_name=sampler, cfg_scale=3.0)  # fmt: skip
        result = txt2img(model, request)[0]
        first = np.asarray(result.image)
        assert first.shape == (16, 16, 3), sampler
        assert np.array_equal(first, np.asarray(txt2img(model, request)[0].image)), sampler
        assert f"Sampler: {sampler}," in result.infotext and "Model: final," in result.infotext


def test_class_prompt_changes_the_image(class_ddpm):
    model = _load(class_ddpm)
    base = GenerationRequest(width=16, height=16, steps=4, seed=9, sampler_name="Euler", cfg_scale=5.0)
    classes = list(json.loads((class_ddpm / "classes.json").read_text()))
    a = np.asarray(txt2img(model, base.replace(prompt=classes[0]))[0].image).astype(int)
    b = np.asarray(txt2img(model, base.replace(prompt=classes[-1]))[0].image).astype(int)
    assert np.abs(a - b).max() > 0  # the class label reaches the UNet


def test_img2img_round_trips_through_the_identity_latent(class_ddpm):
    from PIL import Image

    from sdstudio.pipelines import img2img

    model = _load(class_ddpm)
    init = Image.new("RGB", (16, 16), (200, 30, 30))
    request = GenerationRequest(prompt="", width=16, height=16, steps=4, seed=1, sampler_name="Euler",
                                denoising_strength=0.0001)  # fmt: skip
    out = np.asarray(img2img(model, request, [init])[0].image).astype(int)
    diff = np.abs(out - np.asarray(init).astype(int))  # one step from the smallest sigma: the image comes back
    assert diff.max() <= 8 and diff.mean() < 2.5


def test_cli_generates_from_a_trained_ddpm(class_ddpm, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["txt2img", "red circle", "--model", str(class_ddpm), "--width", "16", "--height", "16",
                 "--steps", "3", "--seed", "3", "--sampler", "DPM++ 2M", "--outdir", str(out),
                 "--precision", "fp32", "--backend", "torch"]) == 0  # fmt: skip
    files = sorted(out.glob("*.png"))
    assert len(files) == 1
    from PIL import Image

    assert Image.open(files[0]).size == (16, 16)


def test_api_generates_from_the_models_folder(class_ddpm, tmp_path):
    from tests.families.conftest import studio_with_model
    from tests.server.conftest import decode_png

    with studio_with_model(tmp_path, class_ddpm, "my-ddpm") as client:
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        assert any("my-ddpm" in t for t in titles), titles
        body = {"prompt": "red circle", "width": 16, "height": 16, "steps": 3, "seed": 11,
                "sampler_name": "Euler a", "override_settings": {"sd_model_checkpoint": "my-ddpm"}}  # fmt: skip
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text
        assert decode_png(r.json()["images"][0]).size == (16, 16)
        assert json.loads(r.json()["info"])["sd_model_name"] == "my-ddpm"
