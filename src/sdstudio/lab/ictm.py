"""ICTM: the iterative convolution-thresholding method for piecewise-constant (Chan-Vese) segmentation.

D. Wang, X.-P. Wang, "The iterative convolution-thresholding method (ICTM) for image segmentation",
arXiv:1904.10917; D. Wang, H. Li, X. Wei, X.-P. Wang, "An efficient iterative thresholding method for
image segmentation", J. Comput. Phys. 350 (2017) 657-667. Reference MATLAB code: ``dongwang91/ICTM``.

An image f (C channels) is split into K regions with indicator functions u_k (Σ_k u_k = 1) and
constant colours c_k. The Chan-Vese energy, with the interface length replaced by its heat-kernel
approximation |Γ_kj| ≈ √(π/τ) ∫ u_j G_τ * u_k, is

    E(u, c) = Σ_k ∫ u_k |f - c_k|² + λ √(π/τ) Σ_{k<j} ∫ u_j G_τ * u_k.

Each iteration: c_k = mean of f over region k (minimises E in c), then
φ_k = |f - c_k|² + λ √(π/τ) G_τ * (Σ_{j≠k} u_j) and u_k = 1 where k = argmin_j φ_j. The length term is
concave in u (G_τ is positive definite), and φ is exactly its linearisation, so E does not increase
(it strictly decreases until a fixed point): the papers' theorem, checked by the tests. Units here:
pixels (τ in px², λ per pixel of interface length, f in [0, 1]); energies are reported per pixel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from sdstudio.lab.heat import heat_convolve

INITS = ("kmeans", "quantile", "box")
MAX_PHASES = 8


@dataclass
class Segmentation:
    """The result of :func:`segment`: labels, region colours and the energy at every iteration."""

    labels: np.ndarray  # (H, W) int, values in [0, K)
    means: np.ndarray  # (K, C) region colours c_k
    energy: list[float]  # E(u^n, c(u^n)) per pixel, n = 0 .. iterations
    iterations: int  # thresholding steps taken
    converged: bool  # stopped at a fixed point (u^{n+1} = u^n)
    seconds: float
    history: list[np.ndarray] = field(default_factory=list)  # labels per iteration (keep_history=True)


def as_channels(image) -> np.ndarray:
    """Return ``image`` (PIL, (H, W) or (H, W, C) array) as a float (C, H, W) array."""
    if hasattr(image, "mode"):  # PIL
        image = np.asarray(image.convert("L" if image.mode in ("L", "I", "F", "1") else "RGB")) / 255.0
    f = np.asarray(image, dtype=np.float64)
    if f.ndim == 2:
        f = f[..., None]
    if f.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {f.shape}")
    return np.moveaxis(f, -1, 0)


def initial_labels(f: np.ndarray, phases: int, init: str = "kmeans", tau: float = 4.0) -> np.ndarray:
    """Return starting labels (H, W) for a (C, H, W) image.

    ``kmeans``: k-means++ (seeded, 3 restarts) on the colours of G_τ * f, then each pixel of
    G_τ * f to its nearest centre (smooth, data-driven, deterministic);
    ``quantile``: split by brightness into K equally large classes;
    ``box``: nested centred rectangles, as the reference demos start (label 0 outside).
    """
    _, h, w = f.shape
    if init == "kmeans":
        return _kmeans_labels(heat_convolve(f, tau), phases)
    if init == "quantile":
        order = np.argsort(f.mean(0).ravel(), kind="stable")
        labels = np.empty(h * w, dtype=np.int64)
        labels[order] = np.arange(h * w) * phases // (h * w)
        return labels.reshape(h, w)
    if init == "box":
        labels = np.zeros((h, w), dtype=np.int64)
        for k in range(1, phases):
            my, mx = h * k // (2 * phases), w * k // (2 * phases)
            labels[my : h - my, mx : w - mx] = k
        return labels
    raise ValueError(f"init must be one of {INITS}, not {init!r}")


def _kmeans_labels(f: np.ndarray, phases: int, restarts: int = 3, steps: int = 30) -> np.ndarray:
    """Labels (H, W) of the nearest of K centres found by k-means++ and Lloyd on (a sample of) f's colours."""
    x = f.reshape(f.shape[0], -1).T  # (N, C)
    rng = np.random.default_rng(0)
    sample = x[rng.choice(len(x), min(len(x), 4096), replace=False)]
    best, best_inertia = None, np.inf
    for _ in range(restarts):
        centres = sample[rng.integers(len(sample))][None]
        while len(centres) < phases:
            d2 = ((sample[:, None] - centres[None]) ** 2).sum(-1).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else None
            centres = np.vstack([centres, sample[rng.choice(len(sample), p=p)]])
        for _ in range(steps):
            near = ((sample[:, None] - centres[None]) ** 2).sum(-1).argmin(1)
            moved = np.array(
                [sample[near == k].mean(0) if (near == k).any() else centres[k] for k in range(phases)]
            )
            if np.allclose(moved, centres):
                break
            centres = moved
        inertia = ((sample - centres[near]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    d2 = np.stack([((x - c) ** 2).sum(1) for c in best])  # (K, N)
    return d2.argmin(0).reshape(f.shape[1:])


def region_means(f: np.ndarray, u: np.ndarray, previous: np.ndarray | None = None) -> np.ndarray:
    """Return c_k = mean of f over region k, (K, C); an empty region keeps ``previous`` (or f's mean)."""
    counts = u.sum((1, 2))  # (K,)
    sums = np.einsum("khw,chw->kc", u, f)
    fallback = previous if previous is not None else np.broadcast_to(f.mean((1, 2)), sums.shape)
    safe = np.maximum(counts, 1)[:, None]
    return np.where(counts[:, None] > 0, sums / safe, fallback)


def _one_hot(labels: np.ndarray, phases: int) -> np.ndarray:
    return (labels[None] == np.arange(phases)[:, None, None]).astype(np.float64)  # (K, H, W)


def _terms(f, u, c, tau, lam, boundary):
    """Data term |f - c_k|² (K, H, W), G_τ * u (K, H, W) and the energy per pixel."""
    data = ((f[None] - c[:, :, None, None]) ** 2).sum(1)
    gu = heat_convolve(u, tau, boundary)
    weight = lam * math.sqrt(math.pi / tau)
    # Σ_{k<j} <u_j, G u_k> = ½ Σ_k <u_k, G(1 - u_k)>, since G 1 = 1 and G is symmetric
    e = (u * data).sum() + 0.5 * weight * (u * (1 - gu)).sum()
    return data, gu, float(e) / u[0].size


def energy(
    image, labels: np.ndarray, phases: int, tau: float, lam: float, boundary: str = "neumann"
) -> float:
    """Return E(u, c(u)) per pixel for ``labels`` (H, W), with c(u) the optimal region means."""
    f = as_channels(image)
    u = _one_hot(np.asarray(labels), phases)
    return _terms(f, u, region_means(f, u), tau, lam, boundary)[2]


def segment(
    image,
    phases: int = 2,
    tau: float = 4.0,
    lam: float = 1.0,
    max_iter: int = 300,
    init: str | np.ndarray = "kmeans",
    boundary: str = "neumann",
    keep_history: bool = False,
) -> Segmentation:
    """Segment ``image`` into ``phases`` piecewise-constant regions by ICTM (Wang & Wang 2019).

    Iterates c-update, heat convolution by FFT and thresholding until the labels stop changing
    (a fixed point) or ``max_iter`` steps; ties keep the current label.
    """
    if not 2 <= phases <= MAX_PHASES:
        raise ValueError(f"phases must be in [2, {MAX_PHASES}], got {phases}")
    if tau <= 0 or lam < 0:
        raise ValueError(f"need tau > 0 and lambda >= 0, got tau={tau}, lambda={lam}")
    start = time.perf_counter()
    f = as_channels(image)
    labels = (
        initial_labels(f, phases, init, tau) if isinstance(init, str) else np.asarray(init, dtype=np.int64)
    )
    if labels.shape != f.shape[1:]:
        raise ValueError(f"initial labels have shape {labels.shape}, the image {f.shape[1:]}")
    if labels.min() < 0 or labels.max() >= phases:
        raise ValueError(f"initial labels must be in [0, {phases})")
    weight = lam * math.sqrt(math.pi / tau)
    u = _one_hot(labels, phases)
    c = region_means(f, u)
    energies: list[float] = []
    history = [labels] if keep_history else []
    converged = False
    for n in range(max_iter + 1):
        c = region_means(f, u, c)
        data, gu, e = _terms(f, u, c, tau, lam, boundary)
        energies.append(e)
        if n == max_iter:
            break
        phi = data + weight * (1 - gu)  # G * (Σ_{j≠k} u_j) = 1 - G * u_k
        best = phi.argmin(0)
        current = np.take_along_axis(phi, labels[None], 0)[0]
        new = np.where(np.take_along_axis(phi, best[None], 0)[0] < current, best, labels)
        if np.array_equal(new, labels):
            converged = True
            break
        labels, u = new, _one_hot(new, phases)
        if keep_history:
            history.append(labels)
    return Segmentation(
        labels, c, energies, len(energies) - 1, converged, time.perf_counter() - start, history
    )


# --- pictures -------------------------------------------------------------------------------------
def regions_image(labels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Return the piecewise-constant image c_{label} as uint8 RGB (H, W, 3)."""
    colours = np.clip(means, 0, 1)
    if colours.shape[1] == 1:
        colours = np.repeat(colours, 3, axis=1)
    return (colours[labels] * 255).round().astype(np.uint8)


def label_map(labels: np.ndarray, phases: int) -> np.ndarray:
    """Return the labels as a grey uint8 picture, label k at value round(255 k / (K - 1))."""
    return (labels * 255 // max(phases - 1, 1)).astype(np.uint8)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """Return a bool (H, W) mask of pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return edge


def overlay(image, labels: np.ndarray, colour=(255, 0, 0)) -> np.ndarray:
    """Return the input as uint8 RGB (H, W, 3) with the region boundaries drawn in ``colour``."""
    f = as_channels(image)
    rgb = np.repeat(f, 3, axis=0) if f.shape[0] == 1 else f[:3]
    out = (np.moveaxis(np.clip(rgb, 0, 1), 0, -1) * 255).round().astype(np.uint8)
    out[boundaries(labels)] = colour
    return out


def animation_frames(image, result: Segmentation, max_frames: int = 60, scale: int = 2) -> list:
    """Return PIL frames, one per (sampled) iteration: boundaries on the input beside the regions."""
    from PIL import Image

    from sdstudio.lab.diffusion_viz import labelled_strip

    f = as_channels(image)
    steps = list(range(len(result.history)))
    if len(steps) > max_frames:
        steps = sorted({round(i * (len(steps) - 1) / (max_frames - 1)) for i in range(max_frames)})
    frames = []
    for i in steps:
        labels = result.history[i]
        u = _one_hot(labels, result.means.shape[0])
        means = region_means(f, u, result.means)
        pictures = [Image.fromarray(overlay(image, labels)), Image.fromarray(regions_image(labels, means))]
        frames.append(labelled_strip(pictures, [f"it {i}", f"E={result.energy[i]:.4g}"], scale))
    return frames


def write_energy(result: Segmentation, csv_path, png_path=None) -> None:
    """Write the energy per iteration as CSV (iteration,energy) and, with ``png_path``, a plot."""
    from pathlib import Path

    rows = "".join(f"{i},{e:.10g}\n" for i, e in enumerate(result.energy))
    Path(csv_path).write_text("iteration,energy\n" + rows)
    if png_path is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(range(len(result.energy)), result.energy, marker=".")
    ax.set_xlabel("iteration")
    ax.set_ylabel("energy per pixel")
    ax.set_title("ICTM energy (non-increasing)")
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
