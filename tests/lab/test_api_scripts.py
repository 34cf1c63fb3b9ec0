"""A1111 clients driving scripts through /sdapi/v1: X/Y/Z plot, prompt matrix, SD upscale."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.server.conftest import FAST, TEST_HOSTS, decode_png, png_b64


@pytest.fixture(scope="module")
def app_client(tmp_path_factory, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("scripts")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS, outdir=root / "outputs", models_dir=root / "models", preview_interval=0.0
    )
    app = create_app(settings, models={"tiny": tiny_sd1})
    with TestClient(app) as c:
        yield app, c
    app.state.studio.stop()


def test_xyz_plot_a1111_request_returns_grid_then_cells(app_client):
    app, client = app_client
    # A1111 v1.10 script_args: X = Seed (index 1) "1-2", Y = CFG Scale (index 6) "3,7", Z nothing,
    # draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds, vary x/y/z, margin, csv_mode
    args = [1, "1-2", [], 6, "3,7", [], 0, "", [], True, True, False, False, False, False, False, 0, False]
    body = {**FAST, "prompt": "a cat", "seed": 4, "script_name": "X/Y/Z plot", "script_args": args}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    images = [decode_png(b) for b in out["images"]]
    assert len(images) == 1 + 4
    assert images[0].width == 2 * 64 + 48 and all(im.size == (64, 64) for im in images[1:])
    info = json.loads(out["info"])
    assert "Script: X/Y/Z plot" in info["infotexts"][0] and "X Type: Seed" in info["infotexts"][0]
    assert [t.split("Seed: ")[1].split(",")[0] for t in info["infotexts"][1:]] == ["1", "2", "1", "2"]
    assert images[1].info["parameters"] == info["infotexts"][1]
    outdir = app.state.studio.outdir
    grids = list((outdir / "txt2img-grids").rglob("*.png"))
    assert len(grids) == 1 and grids[0].parent.parent.name == "txt2img-grids"
    assert Image.open(grids[0]).info["parameters"] == info["infotexts"][0]


def test_xyz_default_args_return_only_the_grid_but_save_every_cell(app_client):
    app, client = app_client
    before = len(list((app.state.studio.outdir / "txt2img-images").rglob("*.png")))
    body = {**FAST, "prompt": "a dog", "seed": 2, "script_name": "x/y/z plot", "script_args": [4, "1,2"]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["images"]) == 1  # A1111 default: "Include Sub Images" off
    after = len(list((app.state.studio.outdir / "txt2img-images").rglob("*.png")))
    assert after - before == 2


def test_prompt_matrix_and_sd_upscale(app_client):
    _, client = app_client
    body = {**FAST, "prompt": "a cat|hat", "seed": 3, "script_name": "prompt matrix", "script_args": []}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 3 and info["infotexts"][2].startswith("a cat, hat")
    init = Image.fromarray(np.full((48, 48, 3), 120, dtype=np.uint8))
    body = {
        **FAST,
        "prompt": "a cat",
        "seed": 3,
        "init_images": [png_b64(init)],
        "denoising_strength": 0.3,
        "script_name": "SD upscale",
        "script_args": [None, 16, 1, 2],  # info, overlap, upscaler index 1 = Lanczos, scale 2
    }
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    (image,) = [decode_png(b) for b in r.json()["images"]]
    assert image.size == (96, 96) and "SD upscale upscaler: Lanczos" in image.info["parameters"]


@pytest.mark.parametrize(
    "path, body, needle",
    [
        ("/sdapi/v1/txt2img", {"script_name": "loopback"}, "x/y/z plot, prompt matrix"),
        ("/sdapi/v1/txt2img", {"script_name": "sd upscale"}, "known scripts"),
        ("/sdapi/v1/txt2img", {"script_name": "x/y/z plot", "script_args": [13, "1,2"]}, "Sigma Churn"),
        ("/sdapi/v1/txt2img", {"script_name": "x/y/z plot", "script_args": [4, "a-b"]}, "Steps"),
        ("/sdapi/v1/txt2img", {"script_name": "x/y/z plot", "script_args": [7, "dog,fox"]}, "Prompt S/R"),
    ],
)
def test_bad_scripts_are_422_before_queueing(app_client, path, body, needle):
    _, client = app_client
    queued = len(client.get("/api/jobs").json()["jobs"])
    r = client.post(path, json={**FAST, "prompt": "x", **body})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert len(client.get("/api/jobs").json()["jobs"]) == queued  # refused before a job was made


def test_xyz_on_img2img_uses_the_img2img_axis_list(app_client):
    app, client = app_client
    init = Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8))
    # img2img list: index 5 is CFG Scale (no "Hires steps" there); Denoising by label
    args = [5, "3,7", [], "Denoising", "0.2,0.6", [], 0, "", [], True, True]
    body = {**FAST, "prompt": "a cat", "seed": 8, "init_images": [png_b64(init)], "script_name": "x/y/z plot",
            "script_args": args}  # fmt: skip
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert len(r.json()["images"]) == 1 + 4 and "X Type: CFG Scale" in info["infotexts"][0]
    assert "Denoising strength: 0.6" in info["infotexts"][4] and "CFG scale: 7" in info["infotexts"][4]
    assert list((app.state.studio.outdir / "img2img-grids").rglob("*.png"))
