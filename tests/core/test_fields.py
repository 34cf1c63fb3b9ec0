"""The field table: every plain knob reaches the request from the A1111 API, the CLI and the infotext."""

from __future__ import annotations

import numpy as np
import pytest

from sdstudio import GenerationRequest
from sdstudio.api.schemas import Img2ImgRequest, Txt2ImgRequest
from sdstudio.cli import build_parser
from sdstudio.fields import KNOBS, from_a1111
from sdstudio.infotext import create_infotext, request_from_infotext

# a non-default value per knob (every knob must have one here, so a new knob gets a test)
SAMPLE = {
    "negative_prompt": "blurry",
    "steps": 7,
    "cfg_scale": 5.5,
    "seed": 1234,
    "subseed": 99,
    "subseed_strength": 0.25,
    "batch_size": 2,
    "n_iter": 3,
    "clip_skip": 2,
    "eta": 0.5,
    "initial_noise_multiplier": 0.8,
    "tiling": True,
    "s_min_uncond": 1.5,
    "fast": True,
    "token_merging_ratio": 0.5,
}


def test_every_knob_has_a_sample_and_is_a_request_field():
    assert {k.name for k in KNOBS} == set(SAMPLE)
    request = GenerationRequest(**SAMPLE)  # every knob is a GenerationRequest field
    assert all(getattr(request, k) == v for k, v in SAMPLE.items())


def test_a1111_fields_map_onto_the_request():
    schema = Img2ImgRequest
    body = {k.a1111: SAMPLE[k.name] for k in KNOBS if k.a1111}
    assert set(body) <= set(schema.model_fields), "every A1111 name is a field of the A1111 schema"
    assert from_a1111(schema(**body, init_images=["x"])) == {k: SAMPLE[k] for k in body}
    assert from_a1111(Txt2ImgRequest()) == {
        "negative_prompt": "",
        "steps": 50,
        "cfg_scale": 7.0,
        "seed": -1,
        "subseed": -1,
        "subseed_strength": 0.0,
        "batch_size": 1,
        "n_iter": 1,
    }


def test_cli_flags_map_onto_the_request():
    argv = ["txt2img", "a cat"]
    for knob in KNOBS:
        value = SAMPLE[knob.name]
        argv += [knob.cli] if value is True else [knob.cli, str(value)]
    args = build_parser().parse_args(argv)
    assert {k.name: getattr(args, k.name) for k in KNOBS} == SAMPLE


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.infotext], ids=lambda k: k.name)
def test_infotext_round_trip(knob):
    request = GenerationRequest(prompt="a cat", **{knob.name: SAMPLE[knob.name]})
    if knob.name == "subseed_strength":
        request = request.replace(subseed=5)
    text = create_infotext(request, seed=request.seed, subseed=request.subseed)
    assert f"{knob.infotext}: " in text
    assert getattr(request_from_infotext(text), knob.name) == SAMPLE[knob.name]
    default = getattr(GenerationRequest(), knob.name)
    if not knob.shown(default):  # A1111 leaves defaults such as "Clip skip: 1" out
        plain = create_infotext(GenerationRequest(prompt="a cat", seed=1), seed=1, subseed=1)
        assert f"{knob.infotext}: " not in plain


def test_noise_multiplier_changes_img2img_and_is_recorded(tiny_sd1):
    from PIL import Image

    from sdstudio.pipelines import img2img

    init = Image.new("RGB", (32, 32), (200, 80, 40))
    base = GenerationRequest(
        prompt="a red square", width=32, height=32, steps=3, seed=3, denoising_strength=0.6
    )
    plain = img2img(tiny_sd1, base, [init])[0]
    quiet = img2img(tiny_sd1, base.replace(initial_noise_multiplier=0.5), [init])[0]
    assert "Noise multiplier" not in plain.infotext and "Noise multiplier: 0.5" in quiet.infotext
    diff = np.abs(np.asarray(plain.image, dtype=int) - np.asarray(quiet.image, dtype=int))
    assert diff.mean() > 0.5  # less noise on the init latents gives another image
    again = img2img(tiny_sd1, request_from_infotext(quiet.infotext, base), [init])[0]
    assert np.array_equal(np.asarray(again.image), np.asarray(quiet.image))
