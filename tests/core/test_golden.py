"""Golden image: a fixed tiny model, seed and sampler must give exactly the stored pixels.

Anything that changes what a seed produces (noise, schedule, sampler maths, decode rounding) breaks
this test on purpose: such a change is a compatibility break and needs a version note. The stored
file was made on one CPU; on another, oneDNN may pick other kernels, so the comparison with it uses
the cross-CPU bound of ``tests/tolerance.py``, while a repeat in this process must be bit-identical.
Regenerate deliberately with ``SDSTUDIO_UPDATE_GOLDEN=1 pytest tests/core/test_golden.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdstudio import GenerationRequest, txt2img
from tests.tolerance import assert_same_composition

GOLDEN = Path(__file__).parent / "golden"
CASES = {
    "sd1-euler-a": GenerationRequest(prompt="a red heart", width=32, height=32, steps=4, seed=1234,
                                     sampler_name="Euler a", cfg_scale=7.0),
    "sd1-dpmpp2m-karras": GenerationRequest(prompt="a rocket", negative_prompt="blurry", width=32, height=32,
                                            steps=4, seed=42, sampler_name="DPM++ 2M", scheduler="Karras"),
}


def test_golden_pixels_on_openvino(tmp_path):
    """What CPU users get by default (``--backend auto`` is OpenVINO): the same golden images within the
    cross-path bound, and bit-identical on a repeat (the suite otherwise runs on PyTorch for speed)."""
    from sdstudio.backends.openvino import use_openvino
    from sdstudio.models.tiny import tiny_sd1

    model = use_openvino(tiny_sd1(), tmp_path, threads=1)
    assert model.compiled_unet is not None
    for name, request in CASES.items():
        image = np.asarray(txt2img(model, request)[0].image)
        assert_same_composition(image, np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB")))
        assert np.array_equal(image, np.asarray(txt2img(model, request)[0].image)), name


def test_golden_pixels(tiny_sd1):
    for name, request in CASES.items():
        image = np.asarray(txt2img(tiny_sd1, request)[0].image)
        path = GOLDEN / f"{name}.png"
        if os.environ.get("SDSTUDIO_UPDATE_GOLDEN"):
            GOLDEN.mkdir(exist_ok=True)
            Image.fromarray(image).save(path)
        expected = np.asarray(Image.open(path).convert("RGB"))
        assert_same_composition(image, expected)
        again = np.asarray(txt2img(tiny_sd1, request)[0].image)
        assert np.array_equal(image, again), f"{name}: a repeated request gave other pixels"


FAMILY_CASES = {  # the other SD families: seeded pixels, not only sizes
    "sdxl-euler": ("tiny_sdxl", GenerationRequest(prompt="a blue cube", negative_prompt="blurry", width=32,
                                                  height=32, steps=4, seed=7, sampler_name="Euler")),
    "sd2-v-dpmpp2m": ("tiny_sd2_v", GenerationRequest(prompt="a green tree", width=32, height=32, steps=4,
                                                      seed=8, sampler_name="DPM++ 2M", scheduler="Karras")),
    "sd2-unipc": ("tiny_sd2", GenerationRequest(prompt="a yellow star", width=32, height=32, steps=4, seed=9,
                                                sampler_name="UniPC")),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(FAMILY_CASES))
def test_golden_pixels_of_each_family(request, name):
    fixture, req = FAMILY_CASES[name]
    model = request.getfixturevalue(fixture)
    image = np.asarray(txt2img(model, req)[0].image)
    path = GOLDEN / f"{name}.png"
    if os.environ.get("SDSTUDIO_UPDATE_GOLDEN"):
        Image.fromarray(image).save(path)
    assert_same_composition(image, np.asarray(Image.open(path).convert("RGB")))
    assert np.array_equal(image, np.asarray(txt2img(model, req)[0].image)), name
