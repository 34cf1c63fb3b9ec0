"""Prompt editing [from:to:when] and alternation [a|b]: conditioning that changes per step."""

from __future__ import annotations

import doctest

import numpy as np
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.pipelines.txt2img import encode_for_batch
from sdstudio.prompts import schedule
from sdstudio.prompts.encode import encode_prompts

BASE = GenerationRequest(prompt="", width=32, height=32, steps=6, seed=11, sampler_name="Euler")


def test_schedule_doctests():
    assert doctest.testmod(schedule).failed == 0


def test_editing_switches_the_conditioning_at_the_right_step(tiny_sd1):
    conditioning = encode_for_batch(tiny_sd1, BASE.replace(prompt="a [dog:cat:0.5]"), 1, 32, 32)
    dog = encode_prompts(tiny_sd1, ["a dog"]).context
    cat = encode_prompts(tiny_sd1, ["a cat"]).context
    for step in range(6):  # 0-based sampler steps; entry (3, "a dog") covers steps 0..3 as in A1111
        expected = dog if step <= 3 else cat
        assert torch.equal(conditioning.cond_at(step).context, expected), step
    assert torch.equal(conditioning.uncond_at(5).context, encode_prompts(tiny_sd1, [""]).context)


def test_alternation_cycles(tiny_sd1):
    conditioning = encode_for_batch(tiny_sd1, BASE.replace(prompt="[red|blue] ball", steps=4), 1, 32, 32)
    red = encode_prompts(tiny_sd1, ["red ball"]).context
    blue = encode_prompts(tiny_sd1, ["blue ball"]).context
    picked = [
        "red"
        if torch.equal(conditioning.cond_at(s).context, red)
        else "blue"
        if torch.equal(conditioning.cond_at(s).context, blue)
        else "?"
        for s in range(4)
    ]
    assert picked == ["red", "red", "blue", "red"]  # A1111: step s uses the first entry with s <= end


def test_edited_prompt_image_differs_from_both_halves(tiny_sd1):
    def pixels(prompt):
        return np.asarray(txt2img(tiny_sd1, BASE.replace(prompt=prompt))[0].image)

    edited = txt2img(tiny_sd1, BASE.replace(prompt="a [dog:cat:0.5]"))[0]
    assert edited.infotext.startswith("a [dog:cat:0.5]\n")
    assert not np.array_equal(np.asarray(edited.image), pixels("a dog"))
    assert not np.array_equal(np.asarray(edited.image), pixels("a cat"))
