"""Load an upscaler file with spandrel: weights read without running code, architecture detected
from the state dict by spandrel's ``ModelLoader``, licence checked before anything is built.

Only architectures of spandrel's core package (MIT licensed; shared/REFERENCE.md section 10) load;
one that a restrictive package registered (``spandrel-extra-arches``: CodeFormer, MAT, ...) is
refused with its licence named.
"""

from __future__ import annotations

import pickle
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdstudio.checkpoints.io import SAFETENSORS_SUFFIXES, read_checkpoint
from sdstudio.errors import SDStudioError

UPSCALER_SUFFIXES = (".pth", ".pt", ".safetensors")
CORE_MODULE = "spandrel.architectures."  # where spandrel's MIT core defines its architectures
# Architectures known to live outside the core, with the licence that keeps them out.
RESTRICTED_LICENCES = {
    "CodeFormer": "S-Lab License 1.0 (non-commercial)",
    "MAT": "CC BY-NC 4.0 (non-commercial)",
    "FeMaSR": "CC BY-NC-SA 4.0 (non-commercial)",
    "SRFormer": "CC BY-NC-SA 4.0 (non-commercial)",
}
UPSCALE_PURPOSES = ("SR", "Restoration")  # spandrel purposes an upscaler may have (not FaceSR, Inpainting)

_IMPORT_LOCK = threading.Lock()


@dataclass
class LoadedUpscaler:
    """A spandrel image model ready to run: ``model(x)`` maps (B, C, H, W) in [0, 1] to
    (B, C, H*scale, W*scale)."""

    model: Any  # spandrel.ImageModelDescriptor
    architecture: str  # spandrel's architecture id, e.g. "ESRGAN", "Compact", "SwinIR"
    scale: int
    multiple_of: int  # input sides must be a multiple of this (spandrel SizeRequirements)
    path: Path | None = None


def read_upscaler_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an upscaler file: ``.safetensors`` (no code), or a pickle read with
    ``torch.load(weights_only=True)`` (a pickle that calls anything but tensor rebuilders is refused
    before it runs). BasicSR nesting (``params_ema`` / ``params``) is unwrapped by spandrel later."""
    p = Path(path)
    if not p.is_file():
        raise SDStudioError(f"upscaler file not found: {p}", field="upscaler")
    suffix = p.suffix.lower()
    if suffix not in UPSCALER_SUFFIXES:
        raise SDStudioError(
            f"{p.name}: unsupported upscaler file type {suffix!r}; expected {', '.join(UPSCALER_SUFFIXES)}",
            field="upscaler",
        )
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            return read_checkpoint(p).state_dict
        except SDStudioError as exc:
            raise SDStudioError(str(exc), field="upscaler") from exc
    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc) or "Unsupported global" in str(exc):
            raise SDStudioError(
                f"{p.name} needs code execution to load (its pickle calls something other than tensor "
                "rebuilders); sdstudio never runs code from a model file: use a .safetensors release",
                field="upscaler",
            ) from exc
        raise SDStudioError(f"{p.name} is not a readable upscaler file: {exc}", field="upscaler") from exc
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # truncated or corrupt file: torch raises several types
        raise SDStudioError(
            f"{p.name} is not a readable upscaler file ({type(exc).__name__}: {str(exc)[:200]})",
            field="upscaler",
        ) from exc
    if not isinstance(obj, dict):
        raise SDStudioError(f"{p.name} holds a {type(obj).__name__}, not a state dict", field="upscaler")
    return obj


def load_upscaler(path: str | Path, *, registry: Any = None, device: str = "cpu") -> LoadedUpscaler:
    """Read ``path`` and build its model with spandrel (``registry``: spandrel's ``MAIN_REGISTRY``
    unless given). Raises SDStudioError for unreadable files, unknown or non-core architectures,
    and models that are not image-to-image upscalers (face restorers, inpainters)."""
    state_dict = read_upscaler_state_dict(path)
    return upscaler_from_state_dict(state_dict, registry=registry, device=device, path=Path(path))


def upscaler_from_state_dict(
    state_dict: dict[str, Any], *, registry: Any = None, device: str = "cpu", path: Path | None = None
) -> LoadedUpscaler:
    """Build an upscaler from a state dict (see :func:`load_upscaler`)."""
    spandrel = import_spandrel()
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    name = path.name if path is not None else "state dict"
    state_dict = spandrel.canonicalize_state_dict(state_dict)
    support = next((s for s in registry.architectures("detection") if s.detect(state_dict)), None)
    if support is None:
        raise SDStudioError(
            f"{name}: no known upscaler architecture matches its weights (spandrel {spandrel.__version__} "
            "core: ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, ...)",
            field="upscaler",
        )
    arch = support.architecture
    check_licence(arch.id, type(arch).__module__, name)
    try:
        descriptor = arch.load(state_dict)
    except Exception as exc:  # a state dict that detection accepted but whose shapes do not fit
        raise SDStudioError(
            f"{name}: {arch.name} weights do not load: {str(exc)[:300]}", field="upscaler"
        ) from exc
    if (
        not isinstance(descriptor, spandrel.ImageModelDescriptor)
        or descriptor.purpose not in UPSCALE_PURPOSES
    ):
        purpose = getattr(descriptor, "purpose", type(descriptor).__name__)
        raise SDStudioError(
            f"{name}: a {arch.name} model ({purpose}) is not an upscaler; upscalers are super-resolution "
            "or restoration models",
            field="upscaler",
        )
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise SDStudioError(
            f"{name}: {arch.name} with {descriptor.input_channels} input channels; only RGB upscalers are supported",
            field="upscaler",
        )
    descriptor.to(torch.device(device)).eval()
    req = descriptor.size_requirements
    return LoadedUpscaler(descriptor, str(arch.id), int(descriptor.scale), max(1, int(req.multiple_of)), path)


def check_licence(arch_id: str, module: str, name: str = "model") -> None:
    """Refuse an architecture that spandrel's MIT core does not define, naming its licence."""
    if module.startswith(CORE_MODULE) and arch_id not in RESTRICTED_LICENCES:
        return
    licence = RESTRICTED_LICENCES.get(arch_id, "a licence sdstudio has not reviewed")
    raise SDStudioError(
        f"{name}: architecture {arch_id} is under {licence}; sdstudio loads only the architectures of "
        "spandrel's MIT-licensed core",
        field="upscaler",
    )


def import_spandrel() -> Any:
    """Import spandrel (installed without its dependencies by scripts/install.sh).

    spandrel's registry imports ``torchvision.transforms.functional`` for two architectures that are no
    upscalers (LaMa inpainting, RestoreFormer). Where torchvision is installed it is used as is. Where
    it is not (PyPI's torchvision is a CUDA build that cannot load beside the CPU build of torch, and
    breaks transformers' imports), those three names are stand-ins that raise when called, present
    in ``sys.modules`` only while spandrel imports: nothing else ever sees a torchvision.
    """
    import importlib.util
    import sys

    if "spandrel" in sys.modules or importlib.util.find_spec("torchvision") is not None:
        import spandrel

        return spandrel
    with _IMPORT_LOCK:
        names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
        sys.modules.update({n: _stand_in(n) for n in names})
        try:
            import spandrel
        finally:
            for n in names:
                sys.modules.pop(n, None)
    return spandrel


def _stand_in(name: str) -> Any:
    import enum
    import types

    module = types.ModuleType(name, "stand-in while spandrel imports; see sdstudio.upscale.load")

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise SDStudioError("this spandrel architecture needs torchvision, which is not installed")

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    module.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    module.rotate = unavailable  # type: ignore[attr-defined]
    module.normalize = unavailable  # type: ignore[attr-defined]
    return module
