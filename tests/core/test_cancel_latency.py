"""Cancel takes effect within one block of the network, not one sampler step: at 2048 px one step of
SD 1.5 is minutes on a CPU, so an interrupt checked only between steps was minutes late."""

from __future__ import annotations

import numpy as np
import pytest

from sdstudio import GenerationRequest
from sdstudio.pipelines import generate
from sdstudio.sampling import CancelToken


@pytest.mark.parametrize("action", ["interrupt", "skip"])
def test_a_cancel_mid_call_stops_before_the_next_block(tiny_sd1, action):
    cancel = CancelToken()
    unet = tiny_sd1.unet
    calls = {"down": 0, "up_after_cancel": 0}

    def cancel_during_first_block(_module, _args, _out):
        calls["down"] += 1
        if calls["down"] == 3:  # mid-way through the second step's model call
            getattr(cancel, action)()

    def count_up(_module, _args):
        if cancel.stop_batch:
            calls["up_after_cancel"] += 1

    hooks = [unet.down_blocks[0].register_forward_hook(cancel_during_first_block),
             unet.up_blocks[-1].register_forward_pre_hook(count_up)]  # fmt: skip
    try:
        request = GenerationRequest(prompt="a cat", width=32, height=32, steps=6, seed=1, sampler_name="Euler",
                                    n_iter=2)  # fmt: skip
        images = generate(tiny_sd1, request, cancel=cancel)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls["up_after_cancel"] == 0  # the rest of that UNet call did not run
    assert np.asarray(images[0].image).shape == (32, 32, 3)  # the partial image is still made (A1111)
    assert "Interrupted: after step 2 of 6," in images[0].infotext  # two steps ran in full
    if action == "interrupt":
        assert len(images) == 1  # the job ends
        assert calls["down"] == 3
    else:
        assert len(images) == 2  # skip ends the batch only; the next one runs in full
        assert calls["down"] == 3 + 6


def test_no_hooks_are_left_on_the_model(tiny_sd1):
    cancel = CancelToken()
    request = GenerationRequest(prompt="a cat", width=32, height=32, steps=2, seed=1, sampler_name="Euler")
    generate(tiny_sd1, request, cancel=cancel)
    assert all(not block._forward_pre_hooks for block in tiny_sd1.unet.modules())
