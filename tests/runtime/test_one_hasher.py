"""One file hasher and one cache: a first load through the model manager reads the checkpoint's bytes
for hashing once (the loader's model hash and the manager's A1111 hash share ``hashes.json``)."""

from __future__ import annotations

import hashlib

from sdstudio.checkpoints import hashing
from sdstudio.models.save import save_single_file
from sdstudio.runtime.manager import ModelManager


def test_first_load_hashes_the_file_once(tmp_path, tiny_sd1, monkeypatch):
    monkeypatch.setenv("SDSTUDIO_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    path = save_single_file(tiny_sd1, folder / "one.safetensors")
    hashed = [0]  # bytes fed to any SHA-256 in the process
    real_sha256 = hashlib.sha256

    class Counting:
        def __init__(self, *args):
            self.inner = real_sha256(*args)

        def update(self, data):
            hashed[0] += len(data)
            self.inner.update(data)

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(hashlib, "sha256", Counting)
    manager = ModelManager(tmp_path / "models", backend="torch", precision="fp32")
    model = manager.acquire("one")
    entry = manager.find("one")
    size = path.stat().st_size
    assert size <= hashed[0] < 2 * size  # read once: by the loader; the manager took the cached digest
    assert entry.sha256 == hashing.file_sha256(path) and model.model_hash == entry.sha256[:10]
