"""A1111 model hash (sha256[:10]) and its per-file JSON cache."""

from __future__ import annotations

import hashlib
import json
import os

from sdstudio.checkpoints.hashing import default_cache_dir, diffusers_weights_file, model_hash


def test_model_hash_is_sha256_prefix(tmp_path):
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"stable diffusion" * 1000)
    assert model_hash(f, None) == hashlib.sha256(f.read_bytes()).hexdigest()[:10]


def test_cache_hit_and_invalidation(tmp_path):
    f = tmp_path / "m.ckpt"
    f.write_bytes(os.urandom(4096))
    cache = tmp_path / "cache" / "hashes.json"
    real = hashlib.sha256(f.read_bytes()).hexdigest()
    assert model_hash(f, cache) == real[:10]
    data = json.loads(cache.read_text())
    entry = data["files"][str(f.resolve())]
    assert entry["sha256"] == real and entry["size"] == 4096
    # a planted value proves the second call reads the cache instead of hashing
    entry["sha256"] = "ab" * 32
    cache.write_text(json.dumps(data))
    assert model_hash(f, cache) == "ababababab"
    # same size, new mtime: the entry is stale and the file is hashed again
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert model_hash(f, cache) == real[:10]
    assert not [p for p in cache.parent.iterdir() if p.name != "hashes.json"]  # atomic write leaves no temp


def test_corrupt_cache_is_ignored_and_rewritten(tmp_path):
    f = tmp_path / "m.bin"
    f.write_bytes(b"x" * 10)
    cache = tmp_path / "hashes.json"
    cache.write_text("{not json")
    assert model_hash(f, cache) == hashlib.sha256(b"x" * 10).hexdigest()[:10]
    assert json.loads(cache.read_text())["version"] == 1


def test_default_cache_dir_env_override(tmp_path):
    assert default_cache_dir({"SDSTUDIO_CACHE_DIR": str(tmp_path)}) == tmp_path
    assert str(default_cache_dir({})).endswith(os.path.join(".cache", "sdstudio"))


def test_diffusers_folder_hash_uses_unet_weights(saved_models, tmp_path):
    folder = saved_models["sd1"]["diffusers"]
    unet_file = diffusers_weights_file(folder, "unet")
    assert unet_file.name == "diffusion_pytorch_model.safetensors"
    assert model_hash(unet_file) == hashlib.sha256(unet_file.read_bytes()).hexdigest()[:10]
