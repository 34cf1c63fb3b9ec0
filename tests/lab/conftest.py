"""Lab test fixtures: the tiny SD 1.x model written as a diffusers folder (for the CLI)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_sd1):
    from sdstudio.models.save import save_diffusers

    path = tmp_path_factory.mktemp("lab-models") / "tiny-sd1"
    save_diffusers(tiny_sd1, path)
    return path
