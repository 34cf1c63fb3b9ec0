"""Seamless tiling (A1111 "Tiling"): circular padding in every UNet and VAE convolution.

With circular padding the whole model is equivariant to circular shifts of its input, so the image
wraps around at its edges and tiles without seams. The padding mode is set on the Conv2d modules
for the duration of one job and restored afterwards (module configuration, not a patch of library
code).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def _convs(model) -> list[torch.nn.Conv2d]:
    return [m for root in (model.unet, model.vae) for m in root.modules() if isinstance(m, torch.nn.Conv2d)]


@contextmanager
def seamless_tiling(model, enabled: bool = True) -> Iterator[None]:
    """Within the block, every UNet/VAE Conv2d pads circularly (if ``enabled``)."""
    if not enabled:
        yield
        return
    convs = _convs(model)
    previous = [c.padding_mode for c in convs]
    try:
        for c in convs:
            c.padding_mode = "circular"
        yield
    finally:
        for c, mode in zip(convs, previous):
            c.padding_mode = mode
