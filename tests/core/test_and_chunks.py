"""AND parts are denoised in chunks of at most ``max_passes`` conditionings per model call (issue 33:
400 parts in one UNet batch took 9 GB); the guidance they combine into is the same."""

from __future__ import annotations

import torch

from sdstudio.prompts.encode import Conditioning
from sdstudio.sampling.guidance import MAX_PASSES_PER_CALL, CFGDenoiser, Composite


def _run(parts: int, max_passes: int):
    calls: list[int] = []

    def inner(x, sigma, cond):  # a per-row function of the conditioning, as a model is
        calls.append(x.shape[0])
        return x * cond.context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + sigma.view(-1, 1, 1, 1)

    conds = [Conditioning(torch.full((2, 77, 8), float(i + 1))) for i in range(parts)]
    composite = Composite(tuple((c, 1.0 / parts) for c in conds))
    uncond = Conditioning(torch.zeros(2, 77, 8))
    sigmas = torch.tensor([2.0, 1.0, 0.0])
    cfg = CFGDenoiser(inner, lambda step: composite, lambda step: uncond, 7.0, sigmas, Conditioning.cat,
                      max_passes=max_passes)  # fmt: skip
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return cfg(x, torch.full((2,), 2.0)), calls


def test_many_parts_are_batched_in_chunks_with_the_same_result():
    chunked, calls = _run(parts=9, max_passes=MAX_PASSES_PER_CALL)
    whole, whole_calls = _run(parts=9, max_passes=100)
    assert whole_calls == [2 * 10]  # before: uncond + 9 parts in one batch
    assert max(calls) <= 2 * MAX_PASSES_PER_CALL and sum(calls) == 2 * 10 and len(calls) == 3
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_plain_cfg_stays_one_call():
    _, calls = _run(parts=1, max_passes=MAX_PASSES_PER_CALL)
    assert calls == [4]
