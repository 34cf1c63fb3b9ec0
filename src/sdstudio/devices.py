"""Device and dtype choice from explicit arguments (no detection at import time, no globals).

Precision "auto" follows the issue: bf16 on a CPU with native bf16 (AVX512-BF16 / AMX; measured ~2x
faster than fp32 here, see shared/REFERENCE.md §8), fp16 on CUDA, otherwise fp32.
"""

from __future__ import annotations

import torch

from sdstudio.errors import SDStudioError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_EXPLICIT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_supports_bf16() -> bool:
    """Return True when this CPU runs bf16 matmuls natively (oneDNN's own check, AVX512-BF16 or AMX)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except RuntimeError:
            pass
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(avx512_bf16 and avx512_bf16())


def resolve_device(
    device: str | torch.device | None = "auto", *, cuda_available: bool | None = None
) -> torch.device:
    """Return the torch device for ``device`` ("auto" = CUDA when available, else CPU)."""
    if isinstance(device, torch.device):
        return device
    name = (device or "auto").strip().lower()
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise SDStudioError(
            f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", field="device"
        ) from exc
    if resolved.type == "cuda" and not cuda_available:
        raise SDStudioError(f"device {device!r} requested but CUDA is not available here", field="device")
    return resolved


def resolve_dtype(precision: str, device: torch.device, *, cpu_bf16: bool | None = None) -> torch.dtype:
    """Return the weight dtype for ``precision`` ("auto" | "fp32" | "bf16" | "fp16") on ``device``.

    ``cpu_bf16`` overrides the CPU bf16 check (tests pass it explicitly).
    """
    name = (precision or "auto").strip().lower()
    if name in _EXPLICIT:
        return _EXPLICIT[name]
    if name != "auto":
        raise SDStudioError(
            f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}", field="precision"
        )
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        if cpu_bf16 is None:
            cpu_bf16 = cpu_supports_bf16()
        return torch.bfloat16 if cpu_bf16 else torch.float32
    return torch.float32
