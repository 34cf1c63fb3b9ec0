"""Weights patched for one job and restored exactly afterwards.

Each patched layer's ``weight`` parameter gets a new tensor ``(original + sum of deltas)`` in the
layer's dtype; the original tensor object is kept aside untouched and put back on exit (also when
the job fails or is interrupted), so the base weights afterwards are the very same bits. Every new
tensor is computed before the first one is swapped in, so an error leaves nothing half-patched.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from sdstudio.errors import SDStudioError
from sdstudio.networks.keys import Target


def merged_weights(
    deltas: Sequence[tuple[Target, torch.Tensor]],
) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """``(parameter, patched tensor)`` per layer: ``(w.float() + sum of its deltas).to(w.dtype)``."""
    totals: dict[int, tuple[torch.nn.Parameter, torch.Tensor]] = {}
    for target, delta in deltas:
        param = target.module.weight
        if param.is_meta:  # weights freed while a compiled graph runs (backends.openvino)
            raise SDStudioError(f"{target.component}.{target.path}: the weights to patch are not loaded")
        _, total = totals.get(id(param), (param, None))
        d = delta.to(param.device, torch.float32)
        totals[id(param)] = (param, d if total is None else total + d)
    return [(p, (p.detach().float() + total).to(p.dtype)) for p, total in totals.values()]


@contextmanager
def patched_weights(deltas: Sequence[tuple[Target, torch.Tensor]]) -> Iterator[int]:
    """Within the block the layers carry their deltas; yields the number of patched layers."""
    with torch.no_grad():
        patched = merged_weights(deltas)
    backups: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
    try:
        for param, data in patched:
            backups.append((param, param.data))
            param.data = data
        yield len(patched)
    finally:
        for param, original in reversed(backups):
            param.data = original
