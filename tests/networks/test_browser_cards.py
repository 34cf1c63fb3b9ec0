"""Models tab extra-network cards in headless Chromium: a click inserts the tag / sets the VAE."""

from __future__ import annotations

import pytest
import torch

from tests.networks.helpers import kohya_lora, save
from tests.server.conftest import LiveServer
from tests.server.test_browser import _shot, browser  # noqa: F401  (the module's Chromium fixture)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("cards")
    save(kohya_lora(tiny_sd1)[0], root / "models" / "Lora" / "inkstyle.safetensors")
    save({"emb_params": torch.randn(1, 32)}, root / "models" / "embeddings" / "goodemb.safetensors")
    (root / "models" / "VAE").mkdir()
    settings = ServerSettings(outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0)
    app = create_app(settings, models={"tiny-sd1": tiny_sd1})
    with LiveServer(app) as live:
        yield live
    app.state.studio.stop()


def test_cards_insert_tags_and_pick_the_vae(browser, server):  # noqa: F811
    ctx = browser.new_context(viewport={"width": 1366, "height": 820})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=15000)
    page.fill("#txt2img-prompt", "a cat")
    page.click("button[data-tab='models']")
    page.click("#lora-list .net-card[data-name='inkstyle']")
    page.click("#emb-list .net-card[data-name='goodemb']")
    assert page.input_value("#txt2img-prompt") == "a cat <lora:inkstyle:1> goodemb"
    page.click("#vae-list .net-card[data-name='None']")
    page.wait_for_selector("#vae-list .net-card.on[data-name='None']")
    _shot(page, "models-cards")
    ctx.close()
    assert not errors, errors
