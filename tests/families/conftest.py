"""A studio whose A1111 models folder holds one model folder (a family's own layout), for API tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def studio_with_model(tmp_path: Path, folder: Path, name: str) -> Iterator[object]:
    """A TestClient of a studio with ``folder`` copied to ``models/Stable-diffusion/<name>``."""
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from tests.server.conftest import TEST_HOSTS

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    shutil.copytree(folder, models / "Stable-diffusion" / name)
    settings = ServerSettings(allowed_hosts=TEST_HOSTS, outdir=tmp_path / "outputs", models_dir=models,
                              preview_interval=0.0, backend="torch")  # fmt: skip
    app = create_app(settings)
    try:
        with TestClient(app) as client:
            yield client
    finally:
        app.state.studio.stop()
