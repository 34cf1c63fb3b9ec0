"""Shared test set-up: offline hub, tiny random-weight models built in memory (diffusers style)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture(scope="session")
def tiny_sd1():
    from sdstudio.models.tiny import tiny_sd1

    return tiny_sd1()


@pytest.fixture(scope="session")
def tiny_sd2():
    from sdstudio.models.tiny import tiny_sd2

    return tiny_sd2()


@pytest.fixture(scope="session")
def tiny_sd2_v():
    from sdstudio.models.tiny import tiny_sd2

    return tiny_sd2(v_prediction=True)


@pytest.fixture(scope="session")
def tiny_sdxl():
    from sdstudio.models.tiny import tiny_sdxl

    return tiny_sdxl()


@pytest.fixture(scope="session")
def tiny_inpaint():
    from sdstudio.models.tiny import tiny_sd1

    return tiny_sd1(inpainting=True)
