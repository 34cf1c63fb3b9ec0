"""Samplers and the model sampling are rank-agnostic (k-diffusion ``append_dims``): a video latent
(B, C, T, H, W) runs through the same samplers as an image latent (B, C, H, W)."""

from __future__ import annotations

import pytest
import torch

from sdstudio.families.model_sampling import DiscreteModelSampling, VDiscreteModelSampling, append_dims
from sdstudio.models.tiny import SD_SCHEDULER
from sdstudio.pipelines.loop import SamplerContext
from sdstudio.sampling import SAMPLERS, DiscreteSchedule, ImageNoise, get_sampler, sigmas_for

S2 = 0.25
SCHEDULE = DiscreteSchedule.from_config(SD_SCHEDULER)
BROWNIAN = {"DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE"}  # Brownian-tree noise (torchsde)


def analytic(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser of Gaussian data N(0, S2), any rank."""
    return x * S2 / (S2 + append_dims(sigma, x.ndim) ** 2)


def _sample(name: str, shape: tuple[int, ...]) -> torch.Tensor:
    spec = get_sampler(name)
    sigmas = sigmas_for(spec, "Automatic", 12, SCHEDULE)
    noise = ImageNoise(shape, [1, 2])  # per image: (C, T, h, w) or (C, T*h, w)
    x = noise.initial() * sigmas[0]
    return spec.function(analytic, x, sigmas, noise=noise, ctx=SamplerContext(SCHEDULE, SD_SCHEDULER))


@pytest.mark.parametrize("name", sorted(spec.name for spec in SAMPLERS))
def test_every_sampler_gives_a_five_dimensional_latent_the_image_result(name):
    """The same numbers laid out as (B, C, T, h, w) or as an image (B, C, T*h, w) sample alike: the
    maths is per element, and the noise is drawn in the same order."""
    video = _sample(name, (2, 3, 4, 4))
    image = _sample(name, (2, 12, 4))
    assert video.shape == (2, 2, 3, 4, 4) and torch.isfinite(video).all()
    if name in BROWNIAN:  # torchsde draws its tree per tensor shape: other numbers, same statistics
        assert abs(float(video.std()) - float(image.std())) < 0.25 * float(image.std())
    else:
        torch.testing.assert_close(video.flatten(2, 3), image, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", [DiscreteModelSampling, VDiscreteModelSampling])
def test_model_sampling_is_the_same_maths_at_any_rank(cls):
    ms = cls(SCHEDULE)
    sigma = torch.tensor([0.5, 3.0])
    x5 = torch.randn(2, 4, 3, 8, 8)
    out5 = torch.randn(2, 4, 3, 8, 8)
    x4, out4 = x5.flatten(2, 3), out5.flatten(2, 3)  # (B, C, T*h, w): the same numbers as an image
    assert torch.equal(ms.calculate_input(sigma, x5).flatten(2, 3), ms.calculate_input(sigma, x4))
    assert torch.equal(ms.calculate_denoised(sigma, out5, x5).flatten(2, 3), ms.calculate_denoised(sigma, out4, x4))
    assert torch.equal(ms.noise_scaling(sigma[:1], out5, x5).flatten(2, 3), ms.noise_scaling(sigma[:1], out4, x4))
