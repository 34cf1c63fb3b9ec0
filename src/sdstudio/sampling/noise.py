"""Seeded noise exactly as A1111 draws it (REFERENCE.md §5): per-image CPU generators.

Image ``i`` of a job draws its initial noise from ``torch.Generator('cpu').manual_seed(seed_i)``;
later noise (ancestral and SDE samplers) continues from the same generator, so an image does not
depend on its batch neighbours and a seed gives the same composition on every device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation used by A1111 variation seeds (``modules/processing.py`` slerp)."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(
        1
    ) * high


class ImageNoise:
    """Per-image generators for one batch; ``initial()`` then ``next()`` like A1111's ImageRNG."""

    def __init__(
        self,
        shape: tuple[int, int, int],  # (C, h, w) latent shape of one image
        seeds: Sequence[int],
        subseeds: Sequence[int] = (),
        subseed_strength: float = 0.0,
        seed_resize_from: tuple[int, int] = (0, 0),  # (h, w) in latent cells; 0 = off
        device: torch.device | str = "cpu",  # where the (CPU-drawn) noise is delivered
    ) -> None:
        self.device = torch.device(device)
        self.shape = shape
        self.seeds = list(seeds)
        self.subseeds = list(subseeds)
        self.subseed_strength = subseed_strength
        self.seed_resize_from = seed_resize_from
        self.generators = [torch.Generator("cpu").manual_seed(int(s)) for s in self.seeds]

    def initial(self) -> torch.Tensor:
        """Initial noise, (B, C, h, w), with variation-seed slerp and seed resize applied."""
        return torch.stack([self._first(i) for i in range(len(self.seeds))]).to(self.device)

    def _first(self, i: int) -> torch.Tensor:
        fh, fw = self.seed_resize_from
        noise_shape = (self.shape[0], fh, fw) if fh and fw else self.shape
        subnoise = None
        if self.subseeds and self.subseed_strength > 0:
            sub_gen = torch.Generator("cpu").manual_seed(int(self.subseeds[i]))
            subnoise = torch.randn(noise_shape, generator=sub_gen)
        noise = torch.randn(noise_shape, generator=self.generators[i])
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if noise_shape != self.shape:
            noise = _paste_centered(noise, self.shape, self.generators[i])
        return noise

    def next(self) -> torch.Tensor:
        """Fresh noise for every image, (B, C, h, w), continuing each image's generator."""
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators]).to(self.device)

    def brownian(self, x: torch.Tensor, sigmas: torch.Tensor) -> BrownianNoise:
        """Brownian-tree noise over this schedule, seeded per image (SDE samplers)."""
        positive = sigmas[sigmas > 0]
        return BrownianNoise(x, float(positive.min()), float(positive.max()), self.seeds)


def _paste_centered(noise: torch.Tensor, shape: tuple[int, int, int], gen: torch.Generator) -> torch.Tensor:
    """A1111 "seed resize from": noise made at another size, centred in fresh noise of ``shape``."""
    _, h, w = shape
    x = torch.randn(shape, generator=gen)
    _, fh, fw = noise.shape
    dx, dy = (w - fw) // 2, (h - fh) // 2
    tx, ty = max(dx, 0), max(dy, 0)
    sx, sy = max(-dx, 0), max(-dy, 0)
    ww, hh = min(w, fw), min(h, fh)
    x[:, ty : ty + hh, tx : tx + ww] = noise[:, sy : sy + hh, sx : sx + ww]
    return x


class BrownianNoise:
    """Brownian-tree noise for SDE samplers, one tree per image seed (k-diffusion BrownianTreeNoiseSampler)."""

    def __init__(self, x: torch.Tensor, sigma_min: float, sigma_max: float, seeds: Sequence[int]) -> None:
        import torchsde

        self.t0, self.t1 = float(sigma_min) * (1 - 1e-4), float(sigma_max) * (1 + 1e-4)
        self.trees = [
            torchsde.BrownianInterval(
                t0=self.t0,
                t1=self.t1,
                size=(1, *x.shape[1:]),
                dtype=x.dtype,
                device=x.device,
                entropy=int(s),
                tol=1e-6,
                pool_size=24,
                halfway_tree=True,
            )
            for s in seeds
        ]

    def __call__(self, sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
        t0, t1 = float(sigma), float(sigma_next)
        lo, hi, sign = (t0, t1, 1.0) if t0 < t1 else (t1, t0, -1.0)
        lo, hi = max(lo, self.t0), min(hi, self.t1)
        w = torch.cat([tree(lo, hi) for tree in self.trees]) * sign
        return w / abs(t1 - t0) ** 0.5
