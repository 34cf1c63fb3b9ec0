"""Per-image seeded noise as A1111 draws it (REFERENCE.md §5)."""

from __future__ import annotations

import torch

from sdstudio.sampling import ImageNoise, slerp


def test_initial_noise_is_torch_randn_of_each_seed():
    noise = ImageNoise((4, 8, 8), [7, 8]).initial()
    for i, seed in enumerate((7, 8)):
        expected = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(noise[i], expected)


def test_image_noise_independent_of_batch_neighbours():
    a = ImageNoise((4, 8, 8), [5, 6, 7])
    b = ImageNoise((4, 8, 8), [6])
    assert torch.equal(a.initial()[1], b.initial()[0])
    assert torch.equal(a.next()[1], b.next()[0])


def test_variation_seed_slerp_endpoints():
    base = ImageNoise((4, 8, 8), [1]).initial()
    other = ImageNoise((4, 8, 8), [2]).initial()
    zero = ImageNoise((4, 8, 8), [1], [2], subseed_strength=0.0).initial()
    half = ImageNoise((4, 8, 8), [1], [2], subseed_strength=0.5).initial()
    assert torch.equal(zero, base)
    assert not torch.allclose(half, base) and not torch.allclose(half, other)
    assert torch.allclose(slerp(1.0, base[0], other[0]), other[0], atol=1e-5)


def test_seed_resize_keeps_the_composition_centred():
    small = ImageNoise((4, 8, 8), [3]).initial()[0]
    big = ImageNoise((4, 12, 12), [3], seed_resize_from=(8, 8)).initial()[0]
    assert torch.equal(big[:, 2:10, 2:10], small)
