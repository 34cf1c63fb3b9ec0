"""The web UI's Scripts panel (X/Y/Z plot) and the Lab tab's prompt study, in headless Chromium."""

from __future__ import annotations

import pytest

from tests.server.test_browser import _set, _shot, browser, page, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.browser


def test_xyz_plot_from_the_scripts_panel(page):  # noqa: F811
    page.fill("#txt2img-prompt", "a cat")
    for name, value in (("width", 64), ("height", 64), ("steps", 2), ("seed", 5)):
        _set(page, f"#txt2img-{name}", value)
    page.select_option("#txt2img-sampler_name", "Euler")
    page.click("#scripts-panel summary")
    page.select_option("#script-name", "x/y/z plot")
    page.select_option("#xyz-x-type", "Seed")
    page.fill("#xyz-x-values", "1-2")
    page.select_option("#xyz-y-type", "Steps")
    page.fill("#xyz-y-values", "1,2")
    page.check("#xyz-lone")
    page.press("#txt2img-prompt", "Control+Enter")
    out = page.locator('[data-output="txt2img"]')
    out.locator(".thumbs img").nth(4).wait_for(timeout=90000)  # the grid + 4 cells
    page.wait_for_function("document.querySelector('[data-output=txt2img] .generate').disabled === false")
    assert "/api/images/txt2img-grids/" in out.locator(".main-image").get_attribute("src")
    assert "Script: X/Y/Z plot" in out.locator(".infotext").inner_text()
    _shot(page, "txt2img-xyz")


def test_prompt_study_from_the_lab_tab(page):  # noqa: F811
    page.click("button[data-tab='lab']")
    page.wait_for_selector("#study-start")
    page.select_option("#study-kind", "custom")
    page.fill("#study-variants", "a cat\na dog")
    _set(page, "#study-seeds", 2)
    _set(page, "#study-steps", 1)
    page.click("#study-start")
    page.wait_for_function(
        "document.querySelector('#study-status').textContent.startsWith('done')", timeout=120000
    )
    link = page.locator("#study-list a").first
    assert "/api/lab/studies/" in link.get_attribute("href") and "a cat | a dog" in link.inner_text()
    _shot(page, "lab-study")
