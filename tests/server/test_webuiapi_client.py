"""The ``webuiapi`` PyPI client, unchanged, against a live uvicorn server on tiny models."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.server.conftest import LiveServer

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture(scope="module")
def live(tmp_path_factory, tiny_sd1, tiny_sd2):
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("live")
    settings = ServerSettings(outdir=root / "outputs", models_dir=root / "models")
    app = create_app(settings, models={"tiny": tiny_sd1, "tiny2": tiny_sd2})
    with LiveServer(app) as server:
        yield server


@pytest.fixture(scope="module")
def api(live):
    return webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler a", steps=2)


def test_webuiapi_txt2img_and_png_info(api):
    result = api.txt2img(
        prompt="a tiny cat", negative_prompt="dog", seed=77, width=64, height=64, batch_size=2
    )
    assert len(result.images) == 2 and result.image.size == (64, 64)
    assert result.info["all_seeds"] == [77, 78] and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a tiny cat"
    info = api.png_info(result.images[1])
    assert info.info == result.info["infotexts"][1]
    assert "Seed: 78" in info.info and info.parameters["Negative prompt"] == "dog"


def test_webuiapi_img2img(api):
    init = Image.new("RGB", (64, 64), (30, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    plain = api.img2img(images=[init], prompt="moss", seed=5, width=64, height=64, denoising_strength=0.6)
    assert plain.image.size == (64, 64) and plain.info["denoising_strength"] == 0.6
    inpainted = api.img2img(images=[init], mask_image=mask, prompt="moss", seed=5, width=64, height=64)
    assert "Mask blur" in inpainted.info["infotexts"][0]
    assert inpainted.image.convert("RGB").getpixel((60, 32)) == pytest.approx((30, 160, 90), abs=12)


def test_webuiapi_listing_options_and_model_switch(api):
    assert set(api.util_get_model_names()) >= {"tiny", "tiny2"}
    assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
    api.util_set_model("tiny2", find_closest=False)
    assert api.util_get_current_model() == "tiny2"
    result = api.txt2img(prompt="x", seed=1, width=64, height=64)
    assert result.info["sd_model_name"] == "tiny-sd2"
    api.util_set_model("tiny", find_closest=False)
    progress = api.get_progress()
    assert progress["progress"] == 0 and progress["state"]["job_count"] == 0
    api.util_wait_for_ready(check_interval=0.1)
    assert api.get_scripts()["txt2img"] == ["x/y/z plot", "prompt matrix"]
    assert isinstance(api.get_upscalers(), list) and api.get_prompt_styles() == []
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    api.interrupt()
    api.skip()
    api.refresh_checkpoints()
