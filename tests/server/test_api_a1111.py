"""A1111 /sdapi/v1 contract: field names, defaults, response shapes and info keys, on a real tiny model."""

from __future__ import annotations

import json
import re
import struct

import pytest
from PIL import Image

import sdstudio
from tests.server.conftest import FAST, decode_png, png_b64

INFO_KEYS = [
    "prompt",
    "all_prompts",
    "negative_prompt",
    "all_negative_prompts",
    "seed",
    "all_seeds",
    "subseed",
    "all_subseeds",
    "subseed_strength",
    "width",
    "height",
    "sampler_name",
    "cfg_scale",
    "steps",
    "batch_size",
    "restore_faces",
    "sd_model_name",
    "sd_model_hash",
    "sd_vae_name",
    "sd_vae_hash",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "denoising_strength",
    "extra_generation_params",
    "index_of_first_image",
    "infotexts",
    "styles",
    "job_timestamp",
    "clip_skip",
    "is_using_inpainting_conditioning",
    "version",
]


@pytest.fixture(scope="module")
def generated(client):
    """One txt2img call (batch of 2) shared by the contract tests below."""
    body = {
        **FAST,
        "prompt": "a red fox",
        "negative_prompt": "blurry",
        "seed": 1234,
        "batch_size": 2,
        "cfg_scale": 6,
    }
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_txt2img_response_shape_and_info(generated):
    assert set(generated) >= {"images", "parameters", "info"}
    info = json.loads(generated["info"])
    assert set(INFO_KEYS) <= set(info)
    assert info["all_seeds"] == [1234, 1235]  # seed, seed+1 (batch-major)
    assert info["all_prompts"] == ["a red fox", "a red fox"] and info["negative_prompt"] == "blurry"
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (64, 64, 2, 6)
    assert info["sampler_name"] == "Euler" and info["sd_model_name"] == "tiny-sd1"
    assert (
        info["version"] == f"sdstudio {sdstudio.__version__}"
        and f"Version: {info['version']}" in info["infotexts"][0]
    )
    assert len(info["infotexts"]) == 2 and "Seed: 1235" in info["infotexts"][1]
    for data, text in zip(generated["images"], info["infotexts"]):
        image = decode_png(data)
        assert image.size == (64, 64)
        assert image.info["parameters"] == text  # A1111 embeds the infotext in the returned PNG
    assert generated["images"][0] != generated["images"][1]


def test_parameters_echo_request_with_a1111_defaults(generated):
    p = generated["parameters"]
    assert p["prompt"] == "a red fox" and p["seed"] == 1234
    # fields the client did not send come back with A1111's defaults
    assert p["sampler_index"] == "Euler" and p["n_iter"] == 1 and p["restore_faces"] is None
    assert p["enable_hr"] is False and p["hr_scale"] == 2.0 and p["send_images"] is True
    assert p["denoising_strength"] == 0.75 and p["seed_resize_from_w"] == -1


def test_openapi_defaults_match_a1111(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    t2i = schemas["Txt2ImgRequest"]["properties"]
    i2i = schemas["Img2ImgRequest"]["properties"]
    defaults = {
        k: t2i[k].get("default")
        for k in ("steps", "cfg_scale", "width", "height", "batch_size", "n_iter", "seed")
    }
    assert defaults == {
        "steps": 50,
        "cfg_scale": 7.0,
        "width": 512,
        "height": 512,
        "batch_size": 1,
        "n_iter": 1,
        "seed": -1,
    }
    assert t2i["sampler_index"]["default"] == "Euler"
    assert i2i["denoising_strength"]["default"] == 0.75 and i2i["inpaint_full_res"]["default"] is True
    assert i2i["inpainting_fill"]["default"] == 0 and i2i["mask_blur_x"]["default"] == 4


def test_images_are_saved_and_recorded(client, generated, studio_app):
    info = json.loads(generated["info"])
    page = client.get("/api/history", params={"job_id": generated["job_id"]}).json()
    assert page["total"] == 2
    by_seed = {item["seed"]: item for item in page["items"]}
    assert set(by_seed) == {1234, 1235}
    item = by_seed[1235]
    assert re.fullmatch(r"txt2img-images/\d{4}-\d{2}-\d{2}/\d{5}-1235\.png", item["path"]), item["path"]
    assert item["infotext"] == info["infotexts"][1] and item["model_name"] == "tiny-sd1"
    assert item["request"]["prompt"] == "a red fox" and item["sampler"] == "Euler"
    f = client.get(item["url"])
    assert f.status_code == 200 and f.content[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = studio_app.state.studio.outdir / item["path"]
    assert Image.open(on_disk).info["parameters"] == item["infotext"]


def test_unknown_fields_warn_and_unsupported_fields_422(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 3, "my_extension_flag": 1, "foo": "x"})
    assert r.status_code == 200
    assert any("foo" in w and "my_extension_flag" in w for w in r.json()["warnings"])
    for body, field in (
        ({"restore_faces": True}, "restore_faces"),
        ({"script_name": "loopback"}, "script_name"),
        ({"alwayson_scripts": {"ControlNet": {"args": [{"enabled": True}]}}}, "alwayson_scripts"),
        ({"s_churn": 0.5}, "s_churn"),
        ({"override_settings": {"sd_vae": "other.vae.pt"}}, "sd_vae"),
        ({"hr_checkpoint_name": "other.safetensors", "enable_hr": True}, "hr_checkpoint_name"),
    ):
        r = client.post("/sdapi/v1/txt2img", json={**FAST, **body})
        assert r.status_code == 422, body
        assert r.json()["field"] == field and field in r.json()["detail"]


def test_webuiapi_style_empty_scripts_are_accepted(client):
    body = {
        **FAST,
        "seed": 9,
        "alwayson_scripts": {"ControlNet": {"args": []}},
        "script_args": [],
        "eta": 1.0,
    }
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200


@pytest.mark.parametrize(
    ("body", "field", "phrase"),
    [
        ({"width": 65}, "width", "multiple of 8"),
        ({"steps": "many"}, "steps", "valid integer"),
        ({"steps": 100000}, "steps", "between 1 and"),
        ({"batch_size": 99}, "batch_size", "batch_size"),
        ({"sampler_name": "Nope"}, "sampler_name", "unknown sampler"),
        ({"scheduler": "wobbly"}, "scheduler", "scheduler"),
        ({"prompt": "x" * 20000}, "prompt", "too long"),
        (
            {"override_settings": {"sd_model_checkpoint": "missing.safetensors"}},
            "sd_model_checkpoint",
            "not found",
        ),
    ],
)
def test_validation_errors_are_422_with_field(client, body, field, phrase):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, **body})
    assert r.status_code == 422
    assert r.json()["field"] == field and phrase in r.json()["detail"]


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (decompression bomb)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_img2img_bad_images_are_422(client):
    import base64

    bomb = base64.b64encode(_bomb_png(30000, 30000)).decode()
    cases = [
        ({"init_images": []}, "init_images"),
        ({"init_images": ["not base64 @@@"]}, "init_images[0]"),
        ({"init_images": [base64.b64encode(b"hello, not an image").decode()]}, "init_images[0]"),
        ({"init_images": [bomb]}, "init_images[0]"),
        ({"init_images": [png_b64(Image.new("RGB", (64, 64)))], "mask": "%%%"}, "mask"),
        ({"init_images": [png_b64(Image.new("RGB", (64, 64)))], "latent_mask": "x"}, "latent_mask"),
    ]
    for body, field in cases:
        r = client.post("/sdapi/v1/img2img", json={**FAST, **body})
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field, r.json()


def test_img2img_and_inpaint_with_and_without_data_prefix(client):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = client.post(
        "/sdapi/v1/img2img",
        json={
            **FAST,
            "prompt": "x",
            "seed": 7,
            "init_images": [png_b64(init, prefix=True)],
            "denoising_strength": 0.5,
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["parameters"]["init_images"] is None  # not echoed unless include_init_images
    info = json.loads(r.json()["info"])
    assert info["denoising_strength"] == 0.5 and "Denoising strength: 0.5" in info["infotexts"][0]
    r = client.post(
        "/sdapi/v1/img2img",
        json={**FAST, "seed": 7, "init_images": [png_b64(init)], "mask": png_b64(mask), "inpainting_fill": 1},
    )
    assert r.status_code == 200, r.text
    out = decode_png(r.json()["images"][0]).convert("RGB")
    assert out.getpixel((2, 2)) == pytest.approx((200, 40, 40), abs=12)  # unmasked corner kept


def test_png_info_roundtrip(client, generated):
    data = generated["images"][1]
    for payload in (data, "data:image/png;base64," + data):
        r = client.post("/sdapi/v1/png-info", json={"image": payload})
        assert r.status_code == 200
        body = r.json()
        assert body["info"] == json.loads(generated["info"])["infotexts"][1]
        assert body["parameters"]["Seed"] == "1235" and body["parameters"]["Prompt"] == "a red fox"
        assert body["parameters"]["Negative prompt"] == "blurry"


def test_listing_routes_shapes(client, studio_app, tmp_path):
    models = studio_app.state.studio.manager.models_dir
    (models / "Stable-diffusion" / "sub").mkdir(exist_ok=True)
    (models / "Stable-diffusion" / "sub" / "dreamy_v2.safetensors").write_bytes(b"\0" * 16)
    header = json.dumps(
        {
            "__metadata__": {"ss_base_model_version": "sd_v1"},
            "w": {"dtype": "F32", "shape": [3, 768], "data_offsets": [0, 9216]},
        }
    )
    blob = struct.pack("<Q", len(header)) + header.encode() + b"\0" * 9216
    (models / "Lora" / "pixel.safetensors").write_bytes(blob)
    (models / "embeddings" / "badhands.safetensors").write_bytes(blob)
    (models / "VAE" / "kl-f8.safetensors").write_bytes(b"\0" * 8)
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    sd = client.get("/sdapi/v1/sd-models").json()
    titles = {m["title"] for m in sd}
    assert {"tiny", "tiny2", "sub/dreamy_v2.safetensors"} <= titles
    dreamy = next(m for m in sd if m["model_name"] == "sub/dreamy_v2")
    assert set(dreamy) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert dreamy["filename"].endswith("dreamy_v2.safetensors")
    lora = client.get("/sdapi/v1/loras").json()
    assert lora == [
        {
            "name": "pixel",
            "alias": "pixel",
            "path": lora[0]["path"],
            "metadata": {"ss_base_model_version": "sd_v1"},
        }
    ]
    emb = client.get("/sdapi/v1/embeddings").json()
    assert (
        emb["loaded"] == {}
        and emb["skipped"]["badhands"]["vectors"] == 3
        and emb["skipped"]["badhands"]["shape"] == 768
    )
    assert client.get("/sdapi/v1/sd-vae").json()[0]["model_name"] == "kl-f8.safetensors"
    samplers = client.get("/sdapi/v1/samplers").json()
    lms = next(s for s in samplers if s["name"] == "LMS")
    assert "k_lms" in lms["aliases"] and set(lms) == {"name", "aliases", "options"}
    scheds = client.get("/sdapi/v1/schedulers").json()
    assert {
        "name": "karras",
        "label": "Karras",
        "aliases": None,
        "default_rho": 7.0,
        "need_inner_model": False,
    } in scheds
    mem = client.get("/sdapi/v1/memory").json()
    assert set(mem) == {"ram", "cuda"} and mem["ram"]["total"] > mem["ram"]["free"] > 0
    assert client.get("/sdapi/v1/scripts").json() == {
        "txt2img": ["x/y/z plot", "prompt matrix"],
        "img2img": ["x/y/z plot", "prompt matrix", "sd upscale"],
    }
    assert client.get("/sdapi/v1/prompt-styles").json() == []
    names = {u["name"] for u in client.get("/sdapi/v1/upscalers").json()}
    assert {"None", "Lanczos"} <= names and not any(n.startswith("Latent") for n in names)
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["port"] == 7860 and flags["backend"] == "torch"


def test_options_select_model_and_switch_between_jobs(client, studio_app):
    opts = client.get("/sdapi/v1/options").json()
    assert opts["sd_model_checkpoint"] in ("tiny", "tiny2") and opts["CLIP_stop_at_last_layers"] == 1
    r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "does-not-exist"})
    assert r.status_code == 422 and r.json()["field"] == "sd_model_checkpoint"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny2"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "tiny2"
    info = json.loads(client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1}).json()["info"])
    assert info["sd_model_name"] == "tiny-sd2"
    body = {**FAST, "seed": 1, "override_settings": {"sd_model_checkpoint": "tiny"}}
    info = json.loads(client.post("/sdapi/v1/txt2img", json=body).json()["info"])
    assert info["sd_model_name"] == "tiny-sd1"
    assert studio_app.state.studio.manager.loaded_name == "tiny"
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"})


def test_progress_idle_shape(client):
    p = client.get("/sdapi/v1/progress").json()
    assert set(p) == {"progress", "eta_relative", "state", "current_image", "textinfo"}
    assert p["progress"] == 0 and p["state"]["job_count"] == 0
    assert set(p["state"]) == {
        "skipped", "interrupted", "stopping_generation", "job", "job_count", "job_timestamp", "job_no",
        "sampling_step", "sampling_steps",
    }  # fmt: skip


def test_rgba_mask_uses_alpha(client):
    """A1111 create_binary_mask: a transparent-background RGBA mask is read from its alpha channel."""
    init = Image.new("RGB", (64, 64), (10, 200, 30))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    mask.paste((0, 0, 0, 255), (0, 0, 32, 64))  # black but opaque on the left: repaint there
    body = {**FAST, "seed": 2, "init_images": [png_b64(init)], "mask": png_b64(mask), "mask_blur": 0}
    r = client.post("/sdapi/v1/img2img", json={**body, "inpainting_fill": 2, "denoising_strength": 1.0})
    assert r.status_code == 200, r.text
    out = decode_png(r.json()["images"][0]).convert("RGB")
    assert out.getpixel((56, 32)) == pytest.approx((10, 200, 30), abs=12)  # right half kept
    assert out.getpixel((8, 32)) != pytest.approx((10, 200, 30), abs=12)  # left half repainted
