"""Statistics for prompt studies: paired bootstrap confidence intervals and image metrics.

Every comparison is paired by seed: variant A and variant B are generated from the same N seeds,
so a per-seed difference removes the seed's own effect. The percentile bootstrap (Efron &
Tibshirani 1993, ch. 13) resamples the N seeds with replacement (fixed RNG seed: reproducible).
SSIM follows Wang et al. 2004 (Gaussian window sigma 1.5, radius 5, K1 0.01, K2 0.03, on [0, 1]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

N_BOOT = 2000


@dataclass(frozen=True)
class Estimate:
    """A statistic with its 95% bootstrap CI, over ``n`` seeds."""

    mean: float
    lo: float
    hi: float
    n: int

    def excludes(self, value: float = 0.0) -> bool:
        return not self.lo <= value <= self.hi

    def to_json(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def bootstrap(
    columns: tuple[np.ndarray, ...],
    stat: Callable[..., np.ndarray],
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    level: float = 0.95,
) -> Estimate:
    """Percentile-bootstrap CI of ``stat(*columns)``, resampling the rows (seeds) of all columns together.

    ``stat`` maps arrays of shape (B, N) (one resample per row) to (B,).
    """
    cols = [np.asarray(c, dtype=np.float64) for c in columns]
    n = len(cols[0])
    if n == 0 or any(len(c) != n for c in cols):
        raise ValueError("bootstrap needs equally long, non-empty columns (one value per seed)")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = stat(*[c[idx] for c in cols])
    point = float(stat(*[c[None, :] for c in cols])[0])
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boots, [tail, 100 - tail])
    return Estimate(point, float(lo), float(hi), n)


def mean_ci(values, **kw) -> Estimate:
    """CI of the mean of per-seed values."""
    return bootstrap((values,), lambda v: v.mean(axis=1), **kw)


def paired_diff_ci(a, b, **kw) -> Estimate:
    """CI of mean(a - b) for values paired by seed."""
    return bootstrap((a, b), lambda x, y: (x - y).mean(axis=1), **kw)


def ratio_ci(a, b, **kw) -> Estimate:
    """CI of mean(a) / mean(b), seeds resampled jointly (e.g. variant change / noise floor)."""
    return bootstrap((a, b), lambda x, y: x.mean(axis=1) / np.maximum(y.mean(axis=1), 1e-12), **kw)


def to_float(image) -> np.ndarray:
    """A PIL image or uint8 array as float64 (H, W, C) in [0, 1]."""
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float64)
    return arr / 255.0


def mean_abs_diff(a, b) -> float:
    """Mean absolute pixel difference in [0, 1] (1 = black vs white everywhere)."""
    return float(np.abs(to_float(a) - to_float(b)).mean())


def ssim(a, b, sigma: float = 1.5, radius: int = 5) -> float:
    """Mean SSIM over pixels and channels (Wang et al. 2004), images in [0, 1]."""
    x, y = to_float(a), to_float(b)
    c1, c2 = 0.01**2, 0.03**2

    def blur(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma=(sigma, sigma, 0), truncate=radius / sigma, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0
