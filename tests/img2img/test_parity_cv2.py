"""Mask blur parity with OpenCV, which A1111 uses (skipped where opencv-python is not installed)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdstudio.pipelines import image_ops as ops

cv2 = pytest.importorskip("cv2")


def _a1111_blur(mask: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A1111 processing.py: cv2.GaussianBlur along x with (2*int(2.5*s+0.5)+1, 1), then along y."""
    if sx > 0:
        mask = cv2.GaussianBlur(mask, (2 * int(2.5 * sx + 0.5) + 1, 1), sx)
    if sy > 0:
        mask = cv2.GaussianBlur(mask, (1, 2 * int(2.5 * sy + 0.5) + 1), sy)
    return mask


@pytest.mark.parametrize("sx,sy", [(4, 4), (1, 0), (0, 3), (2.5, 8), (16, 16), (64, 1)])
def test_blur_mask_matches_opencv(sx, sy):
    """Equal up to OpenCV's 8-bit fixed-point rounding: at most 1 level per blurred axis."""
    rng = np.random.default_rng(int(sx * 10 + sy))
    mask = np.zeros((96, 80), np.uint8)
    for _ in range(4):
        x, y = rng.integers(0, 70), rng.integers(0, 90)
        mask[y : y + rng.integers(2, 30), x : x + rng.integers(2, 30)] = 255
    ours = np.asarray(ops.blur_mask(Image.fromarray(mask), sx, sy)).astype(int)
    theirs = _a1111_blur(mask, sx, sy).astype(int)
    diff = np.abs(ours - theirs)
    assert diff.max() <= (sx > 0) + (sy > 0) and diff.mean() < 0.5
