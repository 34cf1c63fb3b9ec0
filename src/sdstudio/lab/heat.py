"""The heat kernel G_τ applied to images by FFT: the "diffuse" half of the diffusion generated methods.

G_τ(x) = (4πτ)⁻¹ exp(-|x|² / 4τ) is the heat kernel at time τ (τ in pixels², so the blur's standard
deviation is √(2τ) pixels); in Fourier space it multiplies by exp(-τ|ω|²). Two boundary conditions:
``"periodic"`` (plain FFT, as the ICTM reference code ``dongwang91/ICTM`` HeatConv.m does) and
``"neumann"`` (the image mirrored to twice its size first, i.e. the DCT-II heat semigroup, so regions
at one edge do not interact with the opposite edge). Either way the operator is symmetric, positive
definite and keeps constants (G_τ * 1 = 1): the facts the energy-decrease theorems rest on.
"""

from __future__ import annotations

import numpy as np

BOUNDARIES = ("neumann", "periodic")


def heat_multiplier(shape: tuple[int, int], tau: float) -> np.ndarray:
    """Return exp(-τ|ω|²) on the ``rfft2`` grid of an (H, W) array (ω in radians per pixel)."""
    h, w = shape
    wy = 2 * np.pi * np.fft.fftfreq(h)
    wx = 2 * np.pi * np.fft.rfftfreq(w)
    return np.exp(-tau * (wy[:, None] ** 2 + wx[None, :] ** 2))  # (H, W//2+1)


def heat_convolve(x: np.ndarray, tau: float, boundary: str = "neumann") -> np.ndarray:
    """Return G_τ * x over the last two axes of ``x`` (..., H, W), by FFT."""
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, not {boundary!r}")
    x = np.asarray(x, dtype=np.float64)
    h, w = x.shape[-2:]
    if boundary == "neumann":
        x = np.concatenate([x, x[..., ::-1, :]], axis=-2)
        x = np.concatenate([x, x[..., :, ::-1]], axis=-1)  # (..., 2H, 2W), even extension
    mult = heat_multiplier(x.shape[-2:], tau)
    out = np.fft.irfft2(np.fft.rfft2(x, axes=(-2, -1)) * mult, s=x.shape[-2:], axes=(-2, -1))
    return out[..., :h, :w]
