"""A1111 routes over a real models folder: lists reflect the files; LoRA, embeddings and VAE apply."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from sdstudio.models.tiny import _vae
from tests.networks.helpers import kohya_lora, save
from tests.server.conftest import TEST_HOSTS, decode_png

FAST = {"width": 32, "height": 32, "steps": 2, "sampler_name": "Euler", "seed": 11}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd1):
    root = tmp_path_factory.mktemp("netmodels")
    for sub in ("Stable-diffusion", "hypernetworks"):
        (root / sub).mkdir(parents=True)
    sd, _ = kohya_lora(tiny_sd1, alpha=2.0)
    save(sd, root / "Lora" / "style.safetensors", metadata={"ss_output_name": "StyleV2"})
    save(kohya_lora(tiny_sd1, seed=3)[0], root / "Lora" / "chars" / "hero.safetensors")
    save({"emb_params": torch.randn(2, 32)}, root / "embeddings" / "goodemb.safetensors")
    save({"emb_params": torch.randn(1, 1024)}, root / "embeddings" / "sd2emb.safetensors")
    (root / "embeddings" / "broken.pt").write_bytes(b"not a pickle")
    save(_vae(seed=9).state_dict(), root / "VAE" / "other.vae.safetensors")
    (root / "hypernetworks" / "hn.pt").write_bytes(b"\0" * 8)
    return root


@pytest.fixture(scope="module")
def client(tmp_path_factory, models, tiny_sd1):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.networks.vae import use_vae

    settings = ServerSettings(
        allowed_hosts=TEST_HOSTS,
        outdir=tmp_path_factory.mktemp("out"),
        models_dir=models,
        preview_interval=0.0,
    )
    app = create_app(settings, models={"tiny": tiny_sd1})
    with TestClient(app) as c:
        yield c
    app.state.studio.stop()
    use_vae(tiny_sd1, None)  # the session's tiny model gets its own VAE back


def _pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(decode_png(r.json()["images"][0]).convert("RGB"))


def _info(r) -> dict:
    return json.loads(r.json()["info"])


def test_lists_reflect_the_folders(client, models):
    loras = client.get("/sdapi/v1/loras").json()
    assert [(x["name"], x["alias"]) for x in loras] == [("chars/hero", "chars/hero"), ("style", "StyleV2")]
    assert loras[1]["metadata"] == {"ss_output_name": "StyleV2"}
    assert [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").json()] == ["other.vae.safetensors"]
    assert client.get("/sdapi/v1/hypernetworks").json() == [
        {"name": "hn", "path": str(models / "hypernetworks" / "hn.pt")}
    ]
    assert client.get("/sdapi/v1/face-restorers").json() == []
    assert client.get("/sdapi/v1/realesrgan-models").json() == []
    client.get("/sdapi/v1/sd-models")  # no model loaded yet: every readable embedding counts as loaded
    save({"emb_params": torch.randn(3, 32)}, models / "embeddings" / "late.safetensors")
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    emb = client.get("/sdapi/v1/embeddings").json()
    assert "late" in emb["loaded"] and emb["loaded"]["late"]["vectors"] == 3
    assert emb["skipped"]["broken"]["vectors"] == 0


def test_lora_tag_applies_and_next_job_is_unchanged(client, models):
    plain = _pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", **FAST}))
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:style:0.9>", **FAST})
    assert not np.array_equal(_pixels(r), plain)
    data = (models / "Lora" / "style.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[header:]).hexdigest()[:12]
    assert _info(r)["infotexts"][0].count(f'Lora hashes: "style: {addnet}"') == 1
    assert _info(r)["prompt"] == "a cat <lora:style:0.9>"
    assert np.array_equal(_pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "a cat", **FAST})), plain)
    # by alias, in a subfolder, and after the embedding loaded: all apply
    assert (
        client.post(
            "/sdapi/v1/txt2img", json={"prompt": "<lora:StyleV2:1> <lora:hero:0.5> goodemb", **FAST}
        ).status_code
        == 200
    )


def test_missing_and_refused_networks_are_422(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "<lora:nope:1> <lora:gone:1>", **FAST})
    assert r.status_code == 422 and "'nope'" in r.json()["detail"] and "'gone'" in r.json()["detail"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "<hypernet:hn:1>", **FAST})
    assert r.status_code == 422 and "hypernetworks" in r.json()["detail"]


def test_vae_override_and_option(client):
    own = _pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "dog", **FAST}))
    body = {"prompt": "dog", **FAST, "override_settings": {"sd_vae": "other.vae.safetensors"}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    swapped = _pixels(r)
    assert not np.array_equal(swapped, own)
    assert _info(r)["sd_vae_name"] == "other.vae" and "VAE: other.vae" in _info(r)["infotexts"][0]
    assert client.post("/sdapi/v1/options", json={"sd_vae": "other.vae.safetensors"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.vae.safetensors"
    assert np.array_equal(_pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "dog", **FAST})), swapped)
    assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    assert np.array_equal(_pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "dog", **FAST})), own)
    r = client.post("/sdapi/v1/options", json={"sd_vae": "missing.pt"})
    assert r.status_code == 422 and "missing.pt" in r.json()["detail"]


def test_options_hold_every_a1111_key(client):
    from sdstudio.api.a1111_options import A1111_DEFAULTS

    opts = client.get("/sdapi/v1/options").json()
    assert set(A1111_DEFAULTS) <= set(opts) and opts["send_seed"] is True and opts["randn_source"] == "CPU"
    assert (
        client.post("/sdapi/v1/options", json=opts).status_code == 200
    )  # a client writing back what it read
    r = client.post("/sdapi/v1/options", json={"send_seed": False, "gradio_theme": "dark"})
    assert r.status_code == 200 and r.json()["warnings"] == []
    assert client.get("/sdapi/v1/options").json()["send_seed"] is False
    r = client.post("/sdapi/v1/options", json={"send_size": False, "randn_source": "GPU"})
    assert r.status_code == 422 and "randn_source" in r.json()["detail"] and "CPU" in r.json()["detail"]
    assert client.get("/sdapi/v1/options").json()["send_size"] is True  # nothing applied from a refused body
    r = client.post("/sdapi/v1/options", json={"my_extension_knob": 1})
    assert "my_extension_knob" in r.json()["warnings"][0]
