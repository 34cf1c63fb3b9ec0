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


# ---------------------------------------------------------------- layout at the widths people use
# Every tab at a laptop (1440) and a small-window (1024) width: the tab bar stays one row, no visible
# control sticks out of the window or sits under the sticky header, and the sticky Generate /
# Interrupt / Skip row stays below the header while the page scrolls.

TABS = ("txt2img", "img2img", "gallery", "pnginfo", "lab", "models")
LONG_MODEL = "v1-5-pruned-emaonly-with-a-rather-long-file-name.safetensors [6ce0161689]"

# For each visible control: its box, whether it lies inside the window's width, and whether the point
# at its centre belongs to it (so nothing, the header included, is drawn over it).
_CONTROLS_JS = """
() => {
  const header = document.querySelector('header.topbar').getBoundingClientRect();
  const out = [];
  const sel = 'main button, main input, main select, main textarea, main a.button, main label.check, main summary';
  for (const el of document.querySelectorAll(sel)) {
    const r = el.getBoundingClientRect();
    const st = getComputedStyle(el);
    if (r.width <= 1 || r.height <= 1 || st.visibility === 'hidden' || el.closest('[hidden]')) continue;
    const x = r.left + r.width / 2, y = r.top + r.height / 2;
    let covered = null;
    if (y > 0 && y < innerHeight) {
      const hit = document.elementFromPoint(x, y);
      const owner = hit && (hit === el || el.contains(hit) || hit.contains(el) || (el.labels && [...el.labels].some((l) => l.contains(hit))));
      if (!owner) covered = hit ? (hit.closest('header') ? 'header' : hit.tagName + '.' + hit.className) : 'nothing';
    }
    out.push({ name: el.id || el.name || el.textContent.trim().slice(0, 30) || el.tagName, left: r.left, right: r.right,
               top: r.top, bottom: r.bottom, covered, headerBottom: header.bottom });
  }
  return out;
}
"""


def _open_everything(page) -> None:
    """Show the controls that start folded: Hires. fix, Scripts with the X/Y/Z plot."""
    page.evaluate("document.querySelectorAll('main details').forEach((d) => { d.open = true; })")
    page.select_option("#script-name", "x/y/z plot")


@pytest.mark.parametrize("width", [1440, 1024])
def test_every_tab_fits_the_window_and_clears_the_header(browser, server, width):
    ctx = browser.new_context(viewport={"width": width, "height": 800})
    pg = ctx.new_page()
    pg.goto(server.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    # a real checkpoint's title is long: the header must still hold the tabs on one row
    pg.evaluate(
        "(t) => { const s = document.querySelector('#model-select'); s.append(new Option(t, t)); s.value = t; }",
        LONG_MODEL,
    )
    problems = []
    for tab in TABS:
        pg.click(f"button[data-tab='{tab}']")
        if tab == "txt2img":
            _open_everything(pg)
        if tab == "lab":
            pg.wait_for_selector("#study-start")
        pg.evaluate("window.scrollTo(0, 0)")
        pg.wait_for_timeout(150)
        tops = pg.evaluate(
            "[...document.querySelectorAll('.tabs button')].map((b) => b.getBoundingClientRect().top)"
        )
        header = pg.evaluate("document.querySelector('header.topbar').getBoundingClientRect().height")
        if len(set(tops)) != 1 or header > 60:
            problems.append(f"{tab}: tab bar wraps (tops {sorted(set(tops))}, header {header}px)")
        controls = pg.evaluate(_CONTROLS_JS)
        assert len(controls) >= 3, f"{tab}: no controls found"
        for c in controls:
            if c["left"] < -0.5 or c["right"] > width + 0.5:
                problems.append(
                    f"{tab}: {c['name']!r} clipped ({c['left']:.0f}..{c['right']:.0f} of {width})"
                )
            if c["covered"]:
                problems.append(f"{tab}: {c['name']!r} covered by {c['covered']}")
        pg.evaluate("document.activeElement && document.activeElement.blur()")
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / f"layout-{tab}-{width}.png"))
    # scrolled: the sticky Generate / Interrupt / Skip row stays whole and below the header
    for tab in ("txt2img", "img2img"):
        pg.click(f"button[data-tab='{tab}']")
        for y in (300, 900, 100000):
            pg.evaluate(f"window.scrollTo(0, {y})")
            pg.wait_for_timeout(100)
            for c in pg.evaluate(_CONTROLS_JS):
                if c["name"] in ("Generate", "Interrupt", "Skip") and (
                    c["covered"] or c["top"] < c["headerBottom"]
                ):
                    problems.append(f"{tab} scrolled to {y}: {c['name']} under the header ({c})")
        pg.screenshot(path=str(SHOTS / f"layout-{tab}-scrolled-{width}.png"))
    ctx.close()
    assert not problems, "\n".join(problems)


def test_xyz_value_boxes_are_wide_enough(page):
    _open_everything(page)
    for axis in "xyz":
        box = page.locator(f"#xyz-{axis}-values").bounding_box()
        assert box["width"] >= 150, (axis, box)  # "1-5, 1-5 (+2)" fits; it was ~20 px
    hires = page.locator("#hires-enable_hr").bounding_box()
    label = page.locator("label[for='hires-enable_hr']").bounding_box()
    card = page.locator("details.card", has=page.locator("#hires-enable_hr")).bounding_box()
    assert label["x"] <= hires["x"] and hires["x"] + hires["width"] <= label["x"] + 30  # box beside its text
    assert hires["x"] - card["x"] >= 10  # the card has inner padding


def test_rejected_submit_says_so(page):
    _small_job(page, "txt2img")
    _set(page, "#txt2img-width", 70)
    page.click('[data-output="txt2img"] .generate')
    out = page.locator('[data-output="txt2img"]')
    page.wait_for_function(
        "document.querySelector('[data-output=txt2img] .generate').disabled === false", timeout=10000
    )
    assert "multiple of 8" in out.locator(".message").inner_text()
    status = out.locator(".progress-text").inner_text()
    assert "Submitting" not in status and "Not submitted" in status
    assert out.locator(".interrupt").is_disabled()
    assert page.evaluate("document.activeElement.id") == "txt2img-width"


def test_xyz_run_counts_every_image(page):
    _small_job(page, "txt2img", steps=2, prompt="a plot")
    page.locator("#scripts-panel summary").click()
    page.select_option("#script-name", "x/y/z plot")
    page.fill("#xyz-x-values", "1-3")
    page.fill("#xyz-y-values", "3,5")
    page.click('[data-output="txt2img"] .generate')
    # the exact line, not any "Done": the page may still show an earlier test's "Done" until the
    # new job has been submitted
    page.wait_for_function(
        "document.querySelector('[data-output=txt2img] .progress-text').textContent"
        " === 'Done — 6 images + 1 grid'",
        timeout=180000,
    )
    out = page.locator('[data-output="txt2img"]')
    assert out.locator(".thumbs img").count() == 7
    assert out.locator(".progress-text").inner_text() == "Done — 6 images + 1 grid"


def test_upload_with_odd_size_rounds_visibly(page, tmp_path):
    path = tmp_path / "wide.png"
    Image.new("RGB", (1440, 900), (200, 80, 40)).save(path)
    page.click("button[data-tab='img2img']")
    page.set_input_files("#init-file", str(path))
    page.wait_for_selector("#init-size-note:not([hidden])")
    note = page.locator("#init-size-note").inner_text()
    w, h = page.input_value("#img2img-width"), page.input_value("#img2img-height")
    assert (w, h) == ("1440", "904")
    assert "1440×900" in note and "1440×904" in note
    # an image whose size is already allowed is taken as it is, without a note
    Image.new("RGB", (96, 64), "white").save(tmp_path / "ok.png")
    page.set_input_files("#init-file", str(tmp_path / "ok.png"))
    page.wait_for_function("document.querySelector('#img2img-width').value === '96'")
    assert page.locator("#init-size-note").is_hidden()


# ---------------------------------------------------------------- the form follows the model's defaults


@pytest.fixture(scope="module")
def carded_server(tmp_path_factory, tiny_sd1):
    """Two tiny models; "carded" declares steps and sampler in its sdstudio.json, as the embedded one."""
    import dataclasses
    import json

    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("carded")
    card = root / "carded-model"
    card.mkdir()
    (card / "sdstudio.json").write_text(json.dumps({"default_steps": 7, "default_sampler": "DDIM"}))
    carded = dataclasses.replace(tiny_sd1, name="carded", path=str(card))
    assert carded.defaults.steps == 7
    settings = ServerSettings(outdir=root / "outputs", models_dir=None, preview_interval=0.0)
    app = create_app(settings, models={"plain": tiny_sd1, "carded": carded})
    with LiveServer(app) as live:
        yield live
    app.state.studio.stop()


def test_form_follows_the_selected_models_defaults(browser, carded_server):
    import base64
    import json
    import urllib.request

    ctx = browser.new_context(viewport={"width": 1440, "height": 820})
    pg = ctx.new_page()
    pg.goto(carded_server.url + "/")
    pg.wait_for_selector("body[data-ready='1']", timeout=15000)
    pg.select_option("#model-select", "plain")
    pg.wait_for_function("JSON.parse(document.body.dataset.defaults || '{}').steps === null")
    assert pg.input_value("#txt2img-steps") == "20" and pg.input_value("#txt2img-sampler_name") == "Euler a"
    _set(pg, "#txt2img-width", 128)  # the user's size gives way to the next model's native size
    pg.click("button[data-tab='img2img']")
    _set(pg, "#img2img-steps", 30)  # a knob the user set stays
    pg.click("button[data-tab='txt2img']")
    pg.select_option("#model-select", "carded")
    pg.wait_for_function("JSON.parse(document.body.dataset.defaults || '{}').steps === 7")
    for tab in ("txt2img", "img2img"):
        assert pg.input_value(f"#{tab}-sampler_name") == "DDIM"
        assert pg.input_value(f"#{tab}-width") == pg.input_value(f"#{tab}-height") == "32"
    assert pg.input_value("#txt2img-steps") == "7" and pg.input_value("#img2img-steps") == "30"
    # untouched, the form gives the image the API gives for the same prompt and seed
    pg.fill("#txt2img-prompt", "a red kite")
    _set(pg, "#txt2img-seed", 5)
    pg.click('[data-output="txt2img"] .generate')
    pg.wait_for_function(
        "document.querySelector('[data-output=txt2img] .progress-text').textContent.startsWith('Done')",
        timeout=60000,
    )
    ui_info = pg.locator('[data-output="txt2img"] .infotext').inner_text()
    ui_png = urllib.request.urlopen(
        carded_server.url + pg.locator('[data-output="txt2img"] .main-image').get_attribute("src")
    ).read()
    ctx.close()
    body = json.dumps({"prompt": "a red kite", "seed": 5}).encode()
    req = urllib.request.Request(
        carded_server.url + "/sdapi/v1/txt2img", data=body, headers={"Content-Type": "application/json"}
    )
    api = json.loads(urllib.request.urlopen(req).read())
    api_info = json.loads(api["info"])["infotexts"][0]
    assert "Steps: 7, Sampler: DDIM" in ui_info and "Size: 32x32" in ui_info
    assert ui_info == api_info
    ui_img = Image.open(io.BytesIO(ui_png)).convert("RGB")
    api_img = Image.open(io.BytesIO(base64.b64decode(api["images"][0]))).convert("RGB")
    assert ui_img.tobytes() == api_img.tobytes()


def test_running_job_without_steps_says_the_model_is_loading(page):
    """A job that runs but has no step yet is loading (or converting) its model, not at "Step 0/0"."""
    page.evaluate(
        """outputs.txt2img.start(); outputs.txt2img.update({id: "x", state: "running", job_step: 0,
        job_steps: 0, progress: 0, images: [], model: "v1-5-pruned-emaonly.safetensors", batch_count: 1})"""
    )
    text = page.locator('[data-output="txt2img"] .progress-text').inner_text()
    assert text.startswith("Loading v1-5-pruned-emaonly.safetensors…") and "Step 0/0" not in text
    page.evaluate(
        """outputs.txt2img.update({id: "x", state: "running", job_step: 3, job_steps: 15, progress: 0.2,
        images: [], batch_count: 1, batch_index: 0})"""
    )
    assert page.locator('[data-output="txt2img"] .progress-text').inner_text().startswith("Step 3/15")
    page.evaluate("outputs.txt2img.finished = true; outputs.txt2img.job = null; outputs.txt2img.busy(false)")


@pytest.mark.parametrize("fragment", ["%22x%5B", "a%20b", "%E0%A4%A", "tab-txt2img", "lab"])
def test_any_url_hash_starts_the_page(browser, server, fragment):
    """An unknown, garbled or hostile ``#hash`` is ignored (it used to throw in the start-up code); a
    tab's name still opens that tab."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 820})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    try:
        pg.goto(f"{server.url}/#{fragment}")
        pg.wait_for_selector("body[data-ready='1']", timeout=15000)
        assert not errors
        active = pg.locator(".tabs button.active").get_attribute("data-tab")
        assert active == ("lab" if fragment == "lab" else "txt2img")
    finally:
        ctx.close()
