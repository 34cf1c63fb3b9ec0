"""Extra networks at the edge (issue 33): LoRA weights, duplicate tags, malformed LoRA and embedding
files, embedding names matched per token, and ``sd_vae`` confined to models/VAE."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from sdstudio.models.tiny import _vae
from tests.networks.helpers import kohya_lora, save
from tests.server.conftest import TEST_HOSTS, decode_png

FAST = {"width": 32, "height": 32, "steps": 2, "sampler_name": "Euler", "seed": 5}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_sd1):
    root = tmp_path_factory.mktemp("netadmission")
    (root / "Stable-diffusion").mkdir()
    save(kohya_lora(tiny_sd1, alpha=2.0)[0], root / "Lora" / "style.safetensors")
    sd = kohya_lora(tiny_sd1)[0]
    scalar = {
        k: (torch.tensor(0.5) if k.endswith(("lora_up.weight", "lora_down.weight")) else v)
        for k, v in sd.items()
    }
    save(scalar, root / "Lora" / "scalar.safetensors")
    rank0 = {
        k: (v[:0] if k.endswith("lora_down.weight") else v[:, :0] if k.endswith("lora_up.weight") else v)
        for k, v in sd.items()
    }
    save(rank0, root / "Lora" / "rank0.safetensors")
    save({"emb_params": torch.randn(2, 32)}, root / "embeddings" / "goodemb.safetensors")
    save({"emb_params": torch.randn(5000, 32)}, root / "embeddings" / "longemb.safetensors")
    (root / "embeddings" / "e.pt").write_bytes(b"garbage, not a pickle")
    save(_vae(seed=9).state_dict(), root / "VAE" / "other.vae.safetensors")
    (root / "VAE" / "README.md").write_text("not a VAE")
    (root / "VAE" / "folder").mkdir()
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
    use_vae(tiny_sd1, None)


def _pixels(r) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.asarray(decode_png(r.json()["images"][0]).convert("RGB")).astype(int)


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e30", "11", "1:nan", "1:1:0"])
def test_lora_weights_must_be_finite_and_bounded_at_submit(client, weight):
    r = client.post("/api/jobs/txt2img", json={"prompt": f"a cat <lora:style:{weight}>", **FAST})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "prompt"
    assert client.get("/api/jobs").json()["queued"] == 0


def test_duplicate_lora_tags_fold_into_one_delta(client, models, tiny_sd1):
    from sdstudio.networks import NetworkLibrary
    from sdstudio.networks.apply import lora_deltas
    from sdstudio.networks.tags import parse_network_tags

    library = NetworkLibrary.from_models_dir(models)
    one, _ = lora_deltas(tiny_sd1, library, parse_network_tags("<lora:style:1>")[1])
    forty, hashes = lora_deltas(tiny_sd1, library, parse_network_tags("<lora:style:0.025>" * 40)[1])
    assert len(forty) == len(one) and len(hashes) == 1
    for (t1, d1), (t40, d40) in zip(one, forty):
        assert t1.module is t40.module
        torch.testing.assert_close(d40, d1, rtol=1e-5, atol=1e-6)
    whole = _pixels(client.post("/sdapi/v1/txt2img", json={"prompt": "a cat <lora:style:1>", **FAST}))
    halves = "a cat <lora:style:0.5> <lora:style:0.5>"
    folded = _pixels(client.post("/sdapi/v1/txt2img", json={"prompt": halves, **FAST}))
    assert np.abs(whole - folded).max() <= 1  # A1111 sums duplicate tags: the same image


@pytest.mark.parametrize("name", ["scalar", "rank0"])
def test_malformed_lora_files_are_422_not_500(client, name):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": f"a cat <lora:{name}:1>", **FAST})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "prompt" and name in r.json()["detail"]


def test_an_embedding_with_too_many_vectors_is_422_when_used(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a longemb cat", **FAST})
    assert r.status_code == 422, r.text
    assert "5000 vectors" in r.json()["detail"]


def test_a_broken_embedding_breaks_only_prompts_that_use_it(client, caplog):
    caplog.set_level(logging.WARNING, logger="sdstudio.networks.library")
    for prompt, negative in [
        ("cat face", "blurry eyes"),
        ("red heart", ""),
        ("a goodemb cat", "eel, emerald"),
    ]:
        r = client.post("/sdapi/v1/txt2img", json={"prompt": prompt, "negative_prompt": negative, **FAST})
        assert r.status_code == 200, (prompt, r.text)
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "a cat, (e:1.2)", **FAST})  # used: the file is read
    assert r.status_code == 422 and "e.pt" in r.json()["detail"], r.text
    for _ in range(2):  # the listing reads every file: the broken one is skipped and logged once
        assert client.get("/sdapi/v1/embeddings").json()["skipped"]["e"]["vectors"] == 0
    assert sum("e.pt" in rec.getMessage() for rec in caplog.records) == 1


@pytest.mark.parametrize(
    "value",
    [
        "/etc/passwd",
        "/etc",
        "README.md",
        "folder",
        "{models}/VAE/README.md",
        "{models}/VAE/folder",
        "{models}/Lora/style.safetensors",
    ],
)
def test_sd_vae_takes_only_vae_files_of_the_models_folder(client, models, value):
    value = value.format(models=models)
    before = client.get("/sdapi/v1/options").json()["sd_vae"]
    r = client.post("/sdapi/v1/options", json={"sd_vae": value})
    assert r.status_code == 422 and r.json()["field"] == "sd_vae", r.text
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == before  # never stored
    body = {"prompt": "dog", **FAST, "override_settings": {"sd_vae": value}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and r.json()["field"] == "sd_vae", r.text


def test_a_missing_path_and_a_forbidden_one_answer_alike(client, tmp_path):
    outside = tmp_path / "x.safetensors"
    save(_vae(seed=1).state_dict(), outside)
    exists = client.post("/sdapi/v1/options", json={"sd_vae": str(outside)}).json()["detail"]
    missing = client.post("/sdapi/v1/options", json={"sd_vae": str(tmp_path / "y.safetensors")}).json()[
        "detail"
    ]
    assert exists.replace("x.safetensors", "?") == missing.replace("y.safetensors", "?")


def test_sd_vae_names_and_paths_inside_models_vae_still_work(client, models):
    for value in ("other.vae.safetensors", str(models / "VAE" / "other.vae.safetensors")):
        assert client.post("/sdapi/v1/options", json={"sd_vae": value}).status_code == 200
    assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200


def test_lora_listing_skips_huge_metadata_headers_and_reads_each_file_once(tmp_path, monkeypatch):
    import json
    import struct

    from sdstudio.networks import NetworkLibrary
    from sdstudio.networks import library as lib

    folder = tmp_path / "Lora"
    save(
        {"a.lora_down.weight": torch.zeros(1, 2)},
        folder / "small.safetensors",
        metadata={"ss_output_name": "S"},
    )
    header = json.dumps({"__metadata__": {"junk": "x" * (9 * 1024 * 1024)}}).encode()
    (folder / "huge.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    parsed = []
    real = lib.safetensors_metadata
    monkeypatch.setattr(lib, "safetensors_metadata", lambda p, *a: parsed.append(Path(p).name) or real(p, *a))
    library = NetworkLibrary(lora_dir=folder)
    for _ in range(3):
        files = {f.name: f for f in library.files("lora")}
    assert files["small"].alias == "S" and files["huge"].metadata == {}  # 9 MB header: not parsed
    assert sorted(parsed) == ["huge.safetensors", "small.safetensors"]  # once per file state
