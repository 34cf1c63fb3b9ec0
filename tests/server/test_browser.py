"""The web UI in a real headless Chromium (Debian's ``chromium``) driven by Playwright.

Generates on a tiny model and sees the image appear, interrupts a job, opens the gallery,
reads PNG info, paints an inpainting mask; saves a screenshot of every tab to
``test-artifacts/screenshots/``. Skipped cleanly when Chromium or Playwright is missing.
"""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from tests.server.conftest import LiveServer

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("ui")
    (root / "models" / "Lora").mkdir(parents=True)
    (root / "models" / "Lora" / "watercolor.safetensors").write_bytes(b"\0" * 8)
    settings = ServerSettings(outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0)
    from sdstudio.lab.routes import router as lab_router

    app = create_app(settings, models={"tiny-sd1": tiny_sd1}, routers=[lab_router])
    with LiveServer(app) as live:
        yield live


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1366, "height": 820})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    yield pg
    ctx.close()
    assert not errors, errors


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)


def _set(page, selector: str, value) -> None:
    page.fill(selector, str(value))
    page.dispatch_event(selector, "input")


def _small_job(page, tab: str, steps: int = 3, prompt: str = "a lighthouse at dawn") -> None:
    page.fill(f"#{tab}-prompt", prompt)
    for name, value in (("width", 64), ("height", 64), ("steps", steps)):
        _set(page, f"#{tab}-{name}", value)


def test_generate_shows_image_and_reuse(page):
    _small_job(page, "txt2img")
    _set(page, "#txt2img-seed", 321)
    _set(page, "#txt2img-batch_size", 2)
    page.select_option("#txt2img-sampler_name", "Euler")
    page.press("#txt2img-prompt", "Control+Enter")  # keyboard submit
    out = page.locator('[data-output="txt2img"]')
    out.locator(".thumbs img").nth(1).wait_for(timeout=60000)
    page.wait_for_function("document.querySelector('[data-output=txt2img] .generate').disabled === false")
    assert "Done — 2 images" in out.locator(".progress-text").inner_text()
    main = out.locator(".main-image")
    assert main.is_visible() and "/api/images/txt2img-images/" in main.get_attribute("src")
    assert page.evaluate("document.querySelector('[data-output=txt2img] .main-image').naturalWidth") == 64
    info = out.locator(".infotext").inner_text()
    assert "a lighthouse at dawn" in info and "Seed: 321" in info and "Sampler: Euler" in info
    _shot(page, "txt2img")
    # reuse parameters from the second image: seed 322 goes back into the form
    out.locator(".thumbs img").nth(1).click()
    _set(page, "#txt2img-seed", "")
    out.locator(".reuse").click()
    assert page.input_value("#txt2img-seed") == "322"
    assert page.input_value("#txt2img-steps") == "3"


def test_interrupt_running_job(page):
    _small_job(page, "txt2img", steps=150, prompt="interrupt me")
    _set(page, "#txt2img-n_iter", 3)
    page.click('[data-output="txt2img"] .generate')
    out = page.locator('[data-output="txt2img"]')
    page.wait_for_function(
        "document.querySelector('[data-output=txt2img] .progress-text').textContent.startsWith('Step')",
        timeout=30000,
    )
    page.wait_for_function(
        "!document.querySelector('[data-output=txt2img] .main-image').hidden", timeout=30000
    )
    _shot(page, "txt2img-progress")
    out.locator(".interrupt").click()
    page.wait_for_function(
        "document.querySelector('[data-output=txt2img] .progress-text').textContent.startsWith('Interrupted')",
        timeout=30000,
    )
    assert out.locator(".generate").is_enabled() and out.locator(".interrupt").is_disabled()


def test_gallery_filter_and_lightbox(page):
    _small_job(page, "txt2img", prompt="gallery giraffe")
    page.click('[data-output="txt2img"] .generate')
    page.locator('[data-output="txt2img"] .thumbs img').first.wait_for(timeout=60000)
    page.wait_for_function("document.querySelector('[data-output=txt2img] .generate').disabled === false")
    page.click("button[data-tab='gallery']")
    page.locator("#gallery-grid .tile").first.wait_for(timeout=10000)
    total = page.locator("#gallery-grid .tile").count()
    assert total >= 2
    page.fill("#gallery-filters input[name='q']", "giraffe")
    page.wait_for_function("document.querySelectorAll('#gallery-grid .tile').length === 1", timeout=10000)
    assert "giraffe" in page.locator("#gallery-grid .tile .cap").first.inner_text()
    _shot(page, "gallery")
    page.locator("#gallery-grid .tile").first.click()
    assert page.locator("#lightbox").is_visible()
    assert "gallery giraffe" in page.locator("#lightbox-text").inner_text()
    _shot(page, "gallery-lightbox")
    page.click("#lightbox-i2i")
    page.wait_for_selector("#canvas-stack:not([hidden])", timeout=10000)
    assert page.input_value("#img2img-prompt") == "gallery giraffe"


def test_png_info_reads_parameters(page, tmp_path):
    info = PngInfo()
    text = "an owl\nNegative prompt: noisy\nSteps: 17, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 99, Size: 64x64"
    info.add_text("parameters", text)
    path = tmp_path / "owl.png"
    Image.new("RGB", (64, 64), "orange").save(path, pnginfo=info)
    page.click("button[data-tab='pnginfo']")
    page.set_input_files("#png-file", str(path))
    page.wait_for_function(
        "document.querySelector('#png-text').textContent.includes('an owl')", timeout=10000
    )
    rows = page.locator("#png-params tr").all_inner_texts()
    assert any("Sampler" in r and "DPM++ 2M" in r for r in rows) and any(
        "Seed" in r and "99" in r for r in rows
    )
    _shot(page, "pnginfo")
    page.click("#png-to-txt2img")
    assert (
        page.input_value("#txt2img-prompt") == "an owl" and page.input_value("#txt2img-negative") == "noisy"
    )
    assert page.input_value("#txt2img-steps") == "17" and page.input_value("#txt2img-seed") == "99"
    assert page.input_value("#txt2img-sampler_name") == "DPM++ 2M"
    assert page.input_value("#txt2img-scheduler") == "Karras"


def test_img2img_inpaint_with_painted_mask(page, tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (20, 120, 220)).save(buf, format="PNG")
    path = tmp_path / "blue.png"
    path.write_bytes(buf.getvalue())
    page.click("button[data-tab='img2img']")
    page.set_input_files("#init-file", str(path))
    page.wait_for_selector("#canvas-stack:not([hidden])")
    page.click("#img2img-mode label:has(input[value='inpaint'])")
    page.click('[data-output="img2img"] .generate')
    assert "Paint the area" in page.locator('[data-output="img2img"] .message').inner_text()
    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    page.fill("#img2img-prompt", "a white cloud")
    _set(page, "#img2img-steps", 3)
    _shot(page, "img2img")
    page.click('[data-output="img2img"] .generate')
    page.locator('[data-output="img2img"] .thumbs img').first.wait_for(timeout=60000)
    info = page.locator('[data-output="img2img"] .infotext').inner_text()
    assert "Denoising strength: 0.75" in info and "Mask blur: 4" in info
    src = page.locator('[data-output="img2img"] .main-image').get_attribute("src")
    assert re.search(r"/api/images/img2img-images/\d{4}-\d{2}-\d{2}/\d{5}-\d+\.png$", src), src


def test_models_and_lab_tabs(page):
    page.click("button[data-tab='models']")
    page.wait_for_selector("#models-table tr:nth-child(2)")
    assert "tiny-sd1" in page.locator("#models-table").inner_text()
    assert "watercolor" in page.locator("#lora-list").inner_text()
    _shot(page, "models")
    page.click("button[data-tab='lab']")
    page.wait_for_selector("#lab-build")
    page.fill("#lab-steps", "3")
    page.click("#lab-build")
    page.wait_for_selector("#lab-out img.lab-picture", timeout=60_000)
    assert "seed 1" in page.locator("#lab-status").inner_text()
    _shot(page, "lab")


def test_offline_api_reference(browser, server):
    ctx = browser.new_context(viewport={"width": 1366, "height": 820})
    pg = ctx.new_page()
    pg.goto(server.url + "/docs")
    pg.wait_for_selector("details.route")
    pg.locator("details.route", has_text="/sdapi/v1/txt2img").first.locator("summary").click()
    text = pg.locator("details.route[open]").inner_text()
    assert "sampler_index" in text and '"Euler"' in text and "enable_hr" in text
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / "api-docs.png"))
    ctx.close()
