"""The A1111 upscaler routes end to end: /upscalers, /realesrgan-models, /extra-single-image,
/extra-batch-images, on an app whose models folder holds tiny random-weight upscalers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sdstudio.config import Limits
from sdstudio.upscale.image import to_image, to_tensor
from tests.server.conftest import TEST_HOSTS, decode_png, png_b64
from tests.upscale.conftest import BUILDERS, save

MAX_PIXELS = 160 * 160


@pytest.fixture(scope="module")
def nets():
    return {"4x-tinycompact": BUILDERS["Compact"](scale=4), "RealESRGAN_x2tiny": BUILDERS["ESRGAN"](scale=2)}


@pytest.fixture(scope="module")
def client(tmp_path_factory, nets):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    root = tmp_path_factory.mktemp("extras")
    models = root / "models"
    for sub in ("Stable-diffusion", "ESRGAN", "RealESRGAN", "upscale_models"):
        (models / sub).mkdir(parents=True)
    save(nets["4x-tinycompact"], models / "upscale_models" / "4x-tinycompact.safetensors")
    save(nets["RealESRGAN_x2tiny"], models / "RealESRGAN" / "RealESRGAN_x2tiny.pth")
    (models / "ESRGAN" / "notes.txt").write_text("not a model")
    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=root / "outputs",
        models_dir=models,
        preview_interval=0.0,
        limits=Limits(max_image_pixels=MAX_PIXELS),
    )
    app = create_app(settings)
    with TestClient(app) as c:
        yield c
    app.state.studio.stop()


def _image(w=24, h=20, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_upscalers_lists_builtins_then_the_model_files(client):
    items = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in items] == ["None", "Lanczos", "Nearest", "4x-tinycompact", "RealESRGAN_x2tiny"]
    compact = items[3]
    assert compact["model_name"] == "upscale_models" and compact["scale"] == 4
    assert compact["model_path"].endswith("upscale_models/4x-tinycompact.safetensors")
    assert set(compact) == {"name", "model_name", "model_path", "model_url", "scale"}
    real = client.get("/sdapi/v1/realesrgan-models").json()
    assert [(r["name"], r["scale"]) for r in real] == [("RealESRGAN_x2tiny", 2)]


def test_extra_single_image_runs_the_model(client, nets):
    image = _image()
    r = client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": png_b64(image), "upscaler_1": "4x-tinycompact", "upscaling_resize": 4},
    )
    assert r.status_code == 200, r.text
    out = decode_png(r.json()["image"])
    assert out.size == (96, 80)
    with torch.inference_mode():
        ref = to_image(nets["4x-tinycompact"](to_tensor(image)).clamp(0, 1))
    assert np.array_equal(np.asarray(out.convert("RGB")), np.asarray(ref))  # the model's own forward
    info = r.json()["html_info"]
    assert "Postprocess upscale by: 4.0" in info and "Postprocess upscaler: 4x-tinycompact" in info


def test_upscaler_2_is_blended_in_and_resize_to_crops(client):
    image = _image(30, 20, seed=1)
    body = {
        "image": png_b64(image, prefix=True),
        "resize_mode": 1,
        "upscaling_resize_w": 64,
        "upscaling_resize_h": 64,
        "upscaling_crop": True,
        "upscaler_1": "lanczos",
        "upscaler_2": "RealESRGAN_x2tiny",
        "extras_upscaler_2_visibility": 0.5,
    }
    r = client.post("/sdapi/v1/extra-single-image", json=body)
    assert r.status_code == 200, r.text
    out = np.asarray(decode_png(r.json()["image"]).convert("RGB"))
    assert out.shape == (64, 64, 3)
    # 30x20 scaled by max(64/30, 64/20) = 3.2 -> 96x64, centre-cropped to 64x64
    lanczos = np.asarray(image.resize((96, 64), Image.Resampling.LANCZOS))[:, 16:80]
    assert np.abs(out.astype(int) - lanczos.astype(int)).mean() > 1  # upscaler 2 changed it
    body["extras_upscaler_2_visibility"] = 0
    plain = np.asarray(decode_png(client.post("/sdapi/v1/extra-single-image", json=body).json()["image"]))
    assert np.array_equal(plain[..., :3], lanczos)


def test_extra_batch_images(client):
    images = [_image(16, 16, seed=s) for s in range(3)]
    body = {
        "imageList": [{"data": png_b64(im), "name": f"{i}.png"} for i, im in enumerate(images)],
        "upscaler_1": "RealESRGAN_x2tiny",
        "upscaling_resize": 2,
    }
    r = client.post("/sdapi/v1/extra-batch-images", json=body)
    assert r.status_code == 200, r.text
    assert [decode_png(x).size for x in r.json()["images"]] == [(32, 32)] * 3


@pytest.mark.parametrize(
    "body,field,words",
    [
        ({"upscaler_1": "4x-nope"}, "upscaler_1", "installed: None, Lanczos, Nearest, 4x-tinycompact"),
        (
            {"upscaler_1": "Lanczos", "upscaling_resize": 8},
            "upscaling_resize",
            f"limit of {MAX_PIXELS} pixels",
        ),
        ({"upscaler_1": "Lanczos", "upscaling_resize": 9}, "upscaling_resize", ""),
        ({"upscaler_1": "Lanczos", "gfpgan_visibility": 1}, "gfpgan_visibility", "no face restorer"),
    ],
)
def test_bad_extras_requests_are_422_naming_the_field(client, body, field, words):
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(_image()), **body})
    assert r.status_code == 422, r.text
    assert field in r.text and words in r.text


def test_an_input_over_the_pixel_limit_is_refused_before_upscaling(client):
    big = _image(200, 200)
    r = client.post("/sdapi/v1/extra-single-image", json={"image": png_b64(big), "upscaler_1": "Lanczos"})
    assert r.status_code == 422 and str(MAX_PIXELS) in r.text


def test_the_web_ui_offers_model_upscalers_for_hires_fix(client):
    upscalers = client.get("/api/info").json()["upscalers"]
    assert upscalers[0] == "Latent" and upscalers[-2:] == ["4x-tinycompact", "RealESRGAN_x2tiny"]


def test_extras_tiles_by_a1111s_esrgan_tile_options(client, nets):
    """ESRGAN_tile / ESRGAN_tile_overlap decide the tiling: with overlap 16 (margin 4 >= the tiny
    Compact's receptive radius) the result is the untiled forward; with no overlap the seams show."""
    image = _image(40, 36, seed=4)
    with torch.inference_mode():
        ref = np.asarray(to_image(nets["4x-tinycompact"](to_tensor(image)).clamp(0, 1)))
    body = {"image": png_b64(image), "upscaler_1": "4x-tinycompact", "upscaling_resize": 4}
    try:
        results = []
        for overlap in (16, 0):
            assert client.post(
                "/sdapi/v1/options", json={"ESRGAN_tile": 32, "ESRGAN_tile_overlap": overlap}
            ).is_success
            r = client.post("/sdapi/v1/extra-single-image", json=body)
            results.append(np.asarray(decode_png(r.json()["image"]).convert("RGB")))
        differ = [int((res != ref).any(axis=2).sum()) for res in results]
        assert differ[0] <= 2 and differ[1] > 50
    finally:
        client.post("/sdapi/v1/options", json={"ESRGAN_tile": 192, "ESRGAN_tile_overlap": 8})


def test_a_broken_or_hostile_upscaler_file_is_a_422_not_a_crash(client, tmp_path):
    import os

    folder = Path(client.get("/sdapi/v1/upscalers").json()[3]["model_path"]).parent.parent / "ESRGAN"
    marker = tmp_path / "pwned"
    broken, hostile = folder / "4x-broken.pth", folder / "4x-hostile.pth"
    broken.write_bytes(b"PK\x03\x04 truncated zip")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"w": torch.zeros(1), "x": Evil()}, hostile)
    try:
        for name, words in (("4x-broken", "not a readable upscaler file"), ("4x-hostile", "code execution")):
            r = client.post(
                "/sdapi/v1/extra-single-image", json={"image": png_b64(_image()), "upscaler_1": name}
            )
            assert r.status_code == 422 and words in r.text, r.text
        assert not marker.exists()
    finally:
        broken.unlink()
        hostile.unlink()
