"""Model manager on a real A1111-layout models folder: scan, names, hashes, load and switch."""

from __future__ import annotations

import hashlib
import json

import pytest

from sdstudio.errors import SDStudioError
from sdstudio.runtime.manager import ModelManager
from tests.server.conftest import TEST_HOSTS


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_sd1):
    from sdstudio.models.save import save_single_file

    root = tmp_path_factory.mktemp("models")
    for sub in ("Stable-diffusion/anime", "Lora", "VAE", "embeddings"):
        (root / sub).mkdir(parents=True)
    save_single_file(tiny_sd1, root / "Stable-diffusion" / "anime" / "tinyfile.safetensors")
    (root / "Stable-diffusion" / "notes.txt").write_text("not a model")
    (root / "Lora" / "style.safetensors").write_bytes(b"\0" * 8)
    (root / "VAE" / "vae-ft-mse.safetensors").write_bytes(b"\0" * 8)
    (root / "embeddings" / "easyneg.pt").write_bytes(b"\0" * 8)
    return root


def test_scan_follows_a1111_layout(models_dir):
    m = ModelManager(models_dir)
    entry, *embedded = m.entries()
    assert all(e.embedded for e in embedded)  # the shipped model stays listed beside files
    assert (entry.model_name, entry.title, entry.hash) == (
        "anime/tinyfile",
        "anime/tinyfile.safetensors",
        None,
    )
    assert [f.name for f in m.aux_files("lora")] == ["style"]
    assert [f.name for f in m.aux_files("vae")] == ["vae-ft-mse.safetensors"]
    assert [f.name for f in m.aux_files("embeddings")] == ["easyneg"]
    with pytest.raises(SDStudioError, match="not found; available: anime/tinyfile.safetensors"):
        m.find("other")
    if embedded:  # a file in the folder is listed, never picked on its own: the embedded one is
        assert m.current_entry() is embedded[0]


def test_load_hash_and_switch(models_dir, tiny_sd2, monkeypatch, tmp_path):
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path))
    m = ModelManager(models_dir, models={"mem": tiny_sd2})
    assert m.acquire("mem") is tiny_sd2 and m.loaded_name == "mem"
    model = m.acquire("anime/tinyfile.safetensors")
    sha = hashlib.sha256(
        (models_dir / "Stable-diffusion/anime/tinyfile.safetensors").read_bytes()
    ).hexdigest()
    assert model.model_hash == sha[:10] and m.loaded_name == "anime/tinyfile.safetensors"
    entry = m.find(sha[:10])  # by short hash, as A1111 accepts
    assert entry.title == f"anime/tinyfile.safetensors [{sha[:10]}]"
    assert m.find("anime/tinyfile.safetensors [0123456789]") is entry  # stale hash in a client's title
    # no name: not the model a job named for itself, but the one current before it (A1111 restores it)
    assert m.acquire() is tiny_sd2 and m.loaded_name == "mem"
    m.select("anime/tinyfile.safetensors")  # a selection is what later jobs get
    assert m.acquire().model_hash == sha[:10] and m.acquire().model_hash == sha[:10]


def test_generation_from_a_checkpoint_file(models_dir, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from tests.server.conftest import FAST

    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    app = create_app(ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=models_dir))
    with TestClient(app) as c:
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "anime/tinyfile"}).status_code == 200
        r = c.post("/sdapi/v1/txt2img", json={**FAST, "seed": 4, "prompt": "file model"})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        sha = hashlib.sha256(
            (models_dir / "Stable-diffusion/anime/tinyfile.safetensors").read_bytes()
        ).hexdigest()
        assert info["sd_model_hash"] == sha[:10] and info["sd_model_name"] == "tinyfile"
        assert f"Model hash: {sha[:10]}" in info["infotexts"][0]
        listed = c.get("/sdapi/v1/sd-models").json()[0]
        assert listed["sha256"] == sha and listed["title"].endswith(f"[{sha[:10]}]")
        assert c.get("/sdapi/v1/options").json()["sd_checkpoint_hash"] == sha
        assert c.get("/api/history").json()["items"][0]["model_hash"] == sha[:10]


def test_embedded_default_model_is_listed_when_nothing_else(tmp_path):
    """With an empty models folder the shipped default model is the one entry (not loaded yet)."""
    from sdstudio.models.loader import DEFAULT_MODEL_DIR

    if not (DEFAULT_MODEL_DIR / "model_index.json").is_file():
        pytest.skip("no default model shipped in this checkout")
    calls = []
    m = ModelManager(
        tmp_path / "empty", loader=lambda path, **kw: calls.append(path) or pytest.fail("loaded")
    )
    [entry] = m.entries()
    assert entry.embedded and entry.title == DEFAULT_MODEL_DIR.name and entry.hash is None
    assert m.native_size(entry) == 64 and not calls  # read from the folder's configs, no loading
    assert m.current_entry() is entry and m.find(DEFAULT_MODEL_DIR.name) is entry


@pytest.mark.slow
def test_generation_on_the_embedded_default_model(tmp_path):
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    app = create_app(
        ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "out", models_dir=tmp_path / "models")
    )
    with TestClient(app) as c:
        r = c.post(
            "/sdapi/v1/txt2img", json={"prompt": "cat face", "width": 64, "height": 64, "steps": 4, "seed": 1}
        )
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["sd_model_name"] == "default-model" and info["sd_model_hash"]
        [listed] = c.get("/sdapi/v1/sd-models").json()
        title = f"default-model [{info['sd_model_hash']}]"  # A1111 titles carry the hash once known
        assert listed["hash"] == info["sd_model_hash"] and listed["title"] == title
        assert c.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == title
