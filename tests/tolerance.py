"""What holds across code paths and CPUs, stated once for every test that compares images.

Same request, same machine, same code path: bit-identical pixels (assert with ``np.array_equal``).
Across code paths (batch of 2 vs batch of 1, loaded file vs in-memory model) or across CPUs
(Intel vs AMD, other oneDNN kernels): float differences of ~1e-6 in the UNet may move a pixel by a
level or two after the sampler and the 8-bit rounding, never the composition. A changed sampler,
schedule or model moves the mean by tens of levels, so this bound still catches real regressions.
"""

from __future__ import annotations

import numpy as np

MAX_LEVELS = 8  # largest per-pixel difference allowed (of 255)
MEAN_LEVELS = 0.5  # largest mean absolute difference allowed


def assert_same_composition(a, b, *, max_levels: int = MAX_LEVELS, mean_levels: float = MEAN_LEVELS) -> None:
    """Two uint8 images (arrays or PIL) agree within the cross-path/cross-CPU bound."""
    x = np.asarray(a).astype(np.int16)
    y = np.asarray(b).astype(np.int16)
    assert x.shape == y.shape, (x.shape, y.shape)
    diff = np.abs(x - y)
    assert diff.max() <= max_levels and diff.mean() <= mean_levels, (
        f"images differ beyond the cross-path bound: max {diff.max()} (<= {max_levels}), "
        f"mean {diff.mean():.3f} (<= {mean_levels})"
    )
