"""Write a loaded SD 1.x / 2.x / XL model back to disk: one original-layout (A1111/CompVis) safetensors
file, or a diffusers folder. ``sdstudio convert`` and the tests use these; loading lives in
``models.loader``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sdstudio.checkpoints.io import write_safetensors
from sdstudio.errors import SDStudioError
from sdstudio.families.sd.architectures import FAMILIES, Architecture, architecture_for, component_config
from sdstudio.families.sd.keymap import StateDict, canonical_text_keys, diffusers_to_original
from sdstudio.families.sd.load import ARCH_INDEX_KEY, CONFIG_METADATA_PREFIX
from sdstudio.models.sdmodel import StableDiffusionModel
from sdstudio.models.tiny_vae import TINY_VAE_FOLDER, save_tiny_vae


def model_architecture(model: StableDiffusionModel) -> Architecture:
    """Return the :class:`Architecture` of an in-memory model (family from ``model.arch``)."""
    family = "sd2" if model.arch.startswith("sd2") else model.arch
    if family not in FAMILIES:
        raise SDStudioError(f"unknown model architecture {model.arch!r}", field="model")
    return architecture_for(family, inpainting=model.is_inpainting, prediction_type=model.prediction_type)


def _module_config(module: Any) -> dict[str, Any]:
    """Return a module's config as a plain dict without load-time bookkeeping (paths, defaults used)."""
    config = module.config.to_dict() if hasattr(module.config, "to_dict") else dict(module.config)
    return {k: v for k, v in config.items() if k not in ("_use_default_values", "_name_or_path")}


def _scheduler_file_config(model: StableDiffusionModel, arch: Architecture) -> dict[str, Any]:
    shipped = component_config(arch, "scheduler")
    return {"_class_name": shipped["_class_name"], **model.scheduler_config}


def model_components(
    model: StableDiffusionModel,
) -> tuple[Architecture, dict[str, StateDict], dict[str, dict]]:
    """Return (architecture, diffusers component state dicts, component configs) of a model."""
    arch = model_architecture(model)
    model.ensure_torch_unet()  # the backend may have freed the PyTorch UNet's weights
    model.ensure_torch_decoder()  # and the VAE decoder's
    if model.idle_text_encoders is not None:
        model.idle_text_encoders.restore()  # and, between jobs, the text encoders'
    components = {"unet": model.unet.state_dict(), "vae": model.vae.state_dict()}
    configs = {"unet": _module_config(model.unet), "vae": _module_config(model.vae)}
    for spec, encoder in zip(arch.text_encoders, model.text_encoders, strict=True):
        components[spec.subfolder] = canonical_text_keys(encoder.state_dict())
        configs[spec.subfolder] = _module_config(encoder)
    configs["scheduler"] = _scheduler_file_config(model, arch)
    return arch, components, configs


def save_single_file(model: StableDiffusionModel, path: str | Path, *, half: bool = False) -> Path:
    """Write ``model`` as one original-layout (A1111/CompVis) .safetensors file; return its path.

    The component configs and prediction type go into the file's metadata
    (``sdstudio.config.<component>``, ``sdstudio.prediction_type``), so non-standard sizes load
    back exactly; other tools ignore them. ``half`` stores floating tensors as fp16.
    """
    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise SDStudioError(f"single-file output must end in .safetensors, got {p.name}", field="dst")
    arch, components, configs = model_components(model)
    state_dict = diffusers_to_original(components, arch, configs)
    if half:
        state_dict = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    metadata = {"sdstudio.arch": arch.name, "sdstudio.prediction_type": arch.prediction_type}
    for name, config in configs.items():
        metadata[CONFIG_METADATA_PREFIX + name] = json.dumps(config, sort_keys=True, default=list)
    return write_safetensors(state_dict, p, metadata)


def save_diffusers(model: StableDiffusionModel, folder: str | Path, *, half: bool = False) -> Path:
    """Write ``model`` as a diffusers folder (safetensors weights, configs, tokenizers, ``taesd/`` if it
    has a tiny VAE); return it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    arch, _, configs = model_components(model)  # also reloads weights OpenVINO freed
    model.unet.save_pretrained(out / "unet", safe_serialization=True)
    model.vae.save_pretrained(out / "vae", safe_serialization=True)
    index: dict[str, Any] = {
        "_class_name": arch.family.pipeline_class,
        ARCH_INDEX_KEY: arch.name,
        "scheduler": ["diffusers", configs["scheduler"]["_class_name"]],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    for spec, encoder, tokenizer in zip(
        arch.text_encoders, model.text_encoders, model.tokenizers, strict=True
    ):
        encoder.save_pretrained(out / spec.subfolder, safe_serialization=True)
        tokenizer.save_pretrained(out / spec.tokenizer_subfolder)
        index[spec.subfolder] = ["transformers", type(encoder).__name__]
        index[spec.tokenizer_subfolder] = ["transformers", "CLIPTokenizer"]
    (out / "scheduler").mkdir(exist_ok=True)
    _write_json(out / "scheduler" / "scheduler_config.json", configs["scheduler"])
    _write_json(out / "model_index.json", index)
    if half:
        for name in ("unet", "vae", *(s.subfolder for s in arch.text_encoders)):
            _halve_folder(out / name)
    if model.tiny_vae is not None:  # the loader attaches it again from here
        save_tiny_vae(model.tiny_vae, out / TINY_VAE_FOLDER, half=half)
    return out


def _halve_folder(sub: Path) -> None:
    """Rewrite a component folder's safetensors weights as fp16 in place."""
    from safetensors.torch import load_file, save_file

    for f in sub.glob("*.safetensors"):
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(f)).items()}
        save_file(tensors, str(f), metadata={"format": "pt"})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=list) + "\n", encoding="utf-8")
