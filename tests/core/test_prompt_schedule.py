"""Prompt editing [from:to:when] and alternation [a|b]: conditioning that changes per step."""

from __future__ import annotations

import doctest

import numpy as np
import torch

from sdstudio import GenerationRequest, txt2img
from sdstudio.pipelines.plan import encode_for_batch
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


def test_composable_guidance_formula():
    """D = D_u + scale * sum_i w_i (D_i - D_u), each part evaluated in one batch with the uncond."""
    from sdstudio.sampling.guidance import CFGDenoiser, Composite

    def inner(x, sigma, cond):  # a fake denoiser whose output is x times the cond value
        return x * cond.view(-1, 1)

    sigmas = torch.tensor([2.0, 1.0, 0.0])
    u, c1, c2 = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([5.0])
    den = CFGDenoiser(inner, lambda s: Composite(((c1, 1.0), (c2, 0.5))), lambda s: u, 7.0, sigmas, torch.cat)
    x = torch.ones(1, 4)
    expected = 1.0 + 7.0 * (1.0 * (3.0 - 1.0) + 0.5 * (5.0 - 1.0))
    assert torch.allclose(den(x, torch.tensor([2.0])), torch.full((1, 4), expected))
    plain = CFGDenoiser(inner, lambda s: c1, lambda s: u, 7.0, sigmas, torch.cat)
    assert torch.allclose(plain(x, torch.tensor([2.0])), torch.full((1, 4), 1.0 + 7.0 * 2.0))


def test_and_prompts_compose(tiny_sd1):
    def pixels(prompt, model=tiny_sd1):
        return np.asarray(txt2img(model, BASE.replace(prompt=prompt))[0].image)

    both = pixels("a cat AND a hat")
    assert not np.array_equal(both, pixels("a cat")) and not np.array_equal(both, pixels("a hat"))
    assert np.array_equal(pixels("a cat :1"), pixels("a cat"))  # one part of weight 1 is plain CFG
    assert not np.array_equal(pixels("a cat :0.5"), pixels("a cat"))


def test_and_prompts_on_a_9_channel_model(tiny_inpaint):
    out = txt2img(tiny_inpaint, BASE.replace(prompt="a cat AND [a hat:a scarf:0.5] :0.7"))
    assert out[0].image.size == (32, 32)
