"""Shared test set-up: offline hub, tiny random-weight models built in memory (diffusers style)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The default backend is "auto" (OpenVINO where installed); the suite's many short model loads run on
# PyTorch so as not to pay OpenVINO's compilation each time. tests/speed/test_openvino.py covers it.
os.environ.setdefault("SDSTUDIO_BACKEND", "torch")
# The CLI submits to a running studio when one answers at $SDSTUDIO_SERVER (default 127.0.0.1:7860);
# a studio left running on this machine must never take the suite's CLI runs.
os.environ["SDSTUDIO_SERVER"] = ""

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
