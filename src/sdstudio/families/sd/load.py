"""Reading SD 1.x / 2.x / XL models: diffusers folders and single files (A1111/CompVis layout), offline.

* diffusers folder (``model_index.json``): components via ``from_pretrained(local_files_only=True)``;
  tokenizers from the folder when present, else the shipped CLIP tokenizer.
* single file (.safetensors, or .ckpt/.pt/.pth/.bin read weights-only): architecture detected from
  keys and shapes, converted in memory with diffusers' converters, modules built empty from the
  shipped config of that architecture (or the configs our converter embeds in the file's metadata)
  and filled with ``load_state_dict(strict, assign)``; any missing, unexpected or mis-shaped key is
  an SDStudioError naming them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdstudio.checkpoints.io import metadata_json, read_checkpoint
from sdstudio.errors import SDStudioError
from sdstudio.families.base import (
    FamilyLoader,
    LoadOptions,
    ModelInfo,
    ModelParts,
    folder_tensor_stats,
    native_size,
    st_dtype,
)
from sdstudio.families.sd.architectures import (
    ARCHITECTURES,
    FAMILIES,
    UNET_PREFIX,
    VAE_PREFIX,
    Architecture,
    Family,
    architecture_for,
    component_config,
    read_json,
)
from sdstudio.families.sd.detect import UNET_IN_KEY, detect_architecture, normalize_prediction_type
from sdstudio.families.sd.keymap import (
    StateDict,
    fit_text_keys,
    normalize_original_keys,
    original_to_diffusers,
)
from sdstudio.families.sd.tokenizer import clip_tokenizer

CONFIG_METADATA_PREFIX = "sdstudio.config."  # + component name: JSON config embedded by our converter
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")  # SD 1/2 and SDXL text encoders
_SKIP_ALL_BUT = {  # the key prefixes not read when reading only one component
    "unet": (VAE_PREFIX, *TEXT_PREFIXES),
    "vae": (UNET_PREFIX, *TEXT_PREFIXES),
    "text": (UNET_PREFIX, VAE_PREFIX),
}
ARCH_INDEX_KEY = "_sdstudio_arch"  # written into model_index.json by save_diffusers


@dataclass(frozen=True)
class _TensorHeader:
    shape: tuple[int, ...]
    dtype: str


def file_header(path: Path) -> tuple[dict[str, Any], dict[str, str], int | None]:
    """Return ({key: shape/dtype}, metadata, global_step) of a single file; safetensors read lazily."""
    if path.suffix.lower() != ".safetensors":
        ckpt = read_checkpoint(path)
        sd = normalize_original_keys(ckpt.state_dict)
        heads = {k: _TensorHeader(tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()}
        return heads, ckpt.metadata, ckpt.global_step
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            heads = {}
            for key in f.keys():  # noqa: SIM118 (safe_open is no dict)
                view = f.get_slice(key)
                heads[key] = _TensorHeader(tuple(view.get_shape()), st_dtype(view.get_dtype()))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise SDStudioError(
            f"{path} is not a valid checkpoint: not a valid safetensors file (truncated or corrupt: {exc})",
            field="model",
        ) from exc
    return normalize_original_keys(heads), metadata, None


def load_folder(folder: Path, prediction_type: str | None, lazy_unet: bool = False) -> ModelParts:
    """Build the model from a diffusers folder; ``lazy_unet`` leaves the UNet's weights unread (``meta``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = read_json(folder / "model_index.json")
    for sub in ("unet", "vae", "text_encoder"):
        if not (folder / sub / "config.json").is_file():
            raise SDStudioError(f"diffusers folder {folder} has no {sub}/config.json", field="model")
    if lazy_unet:
        config = read_json(folder / "unet" / "config.json")
        unet = build_module(unet_factory(config), None, "UNet", folder)
    else:
        unet = from_pretrained(UNet2DConditionModel, folder, "unet")
    vae = from_pretrained(AutoencoderKL, folder, "vae")
    arch = folder_architecture(folder, index, dict(unet.config), prediction_type)
    text_encoders, tokenizers = [], []
    for spec in arch.text_encoders:
        text_encoders.append(from_pretrained(text_class(spec.class_name), folder, spec.subfolder))
        tokenizers.append(_folder_tokenizer(folder / spec.tokenizer_subfolder, spec.pad_token))
    sched_file = folder / "scheduler" / "scheduler_config.json"
    scheduler = read_json(sched_file) if sched_file.is_file() else component_config(arch, "scheduler")
    return ModelParts(
        name=folder.name,
        arch=arch.model_arch,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=_scheduler_config(scheduler, arch.prediction_type),
        path=str(folder),
    )


def folder_architecture(
    folder: Path, index: dict[str, Any], unet_config: dict[str, Any], prediction_type: str | None
) -> Architecture:
    """Return a diffusers folder's architecture: recorded by save_diffusers, else inferred from its configs."""
    recorded = index.get(ARCH_INDEX_KEY)
    if recorded in ARCHITECTURES:
        family = ARCHITECTURES[recorded].family.name
    elif "text_encoder_2" in index or unet_config.get("addition_embed_type") == "text_time":
        family = "sdxl"
    elif unet_config.get("cross_attention_dim") == 1024 or _tokenizer_pad(folder / "tokenizer") == "!":
        family = "sd2"  # OpenCLIP ViT-H context (1024-d), padded with "!"
    else:
        family = "sd1"
    sched_file = folder / "scheduler" / "scheduler_config.json"
    found = read_json(sched_file).get("prediction_type") if sched_file.is_file() else None
    prediction = normalize_prediction_type(prediction_type) or normalize_prediction_type(found) or "epsilon"
    inpainting = int(unet_config.get("in_channels", 4)) == 9
    return architecture_for(family, inpainting=inpainting, prediction_type=prediction)


def _tokenizer_pad(tok_dir: Path) -> str | None:
    """Return the pad token a diffusers tokenizer folder declares, or None."""
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            pad = read_json(tok_dir / name).get("pad_token")
            return pad.get("content") if isinstance(pad, dict) else pad
    return None


def from_pretrained(cls: Any, folder: Path, subfolder: str) -> Any:
    try:
        return cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SDStudioError(
            f"cannot load {subfolder} from {folder}: {str(exc).splitlines()[0]}", field="model"
        ) from exc


def text_class(name: str) -> Any:
    import transformers

    if name not in ("CLIPTextModel", "CLIPTextModelWithProjection"):
        raise SDStudioError(f"unsupported text encoder class {name}", field="model")
    return getattr(transformers, name)


def _folder_tokenizer(tok_dir: Path, pad_token: str) -> Any:
    has_bpe = (tok_dir / "vocab.json").is_file() and (tok_dir / "merges.txt").is_file()
    if has_bpe or (tok_dir / "tokenizer.json").is_file():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    return clip_tokenizer(pad_token=pad_token)


def _scheduler_config(config: dict[str, Any], prediction_type: str) -> dict[str, Any]:
    """Return the scheduler config without diffusers' bookkeeping keys, with the resolved prediction type."""
    clean = {k: v for k, v in config.items() if not k.startswith("_")}
    clean["prediction_type"] = prediction_type
    return clean


def load_single_file(
    path: Path,
    prediction_type: str | None,
    dtype: torch.dtype | None = None,
    lazy_unet: bool = False,
    only: str | None = None,
) -> ModelParts:
    """Build the model from one file; ``dtype`` converts each tensor as it is read (no full-size copy
    in the file's dtype beside the target one; ``_place`` then finds the tensors already owned).
    ``lazy_unet`` leaves the UNet's weights unread (``meta``; safetensors only); ``only`` ("unet", "vae"
    or "text") leaves every other component's unread instead (re-reading what was freed)."""
    skip = (UNET_PREFIX,) if lazy_unet else _SKIP_ALL_BUT.get(only, ())
    checkpoint = read_checkpoint(path, dtype, skip=skip)
    state_dict = normalize_original_keys(checkpoint.state_dict)
    arch = detect_architecture(
        state_dict,
        prediction_type=prediction_type,
        metadata=checkpoint.metadata,
        global_step=checkpoint.global_step,
    )
    configs = _component_configs(arch, checkpoint.metadata)
    components = original_to_diffusers(state_dict, arch, configs)
    del checkpoint, state_dict
    unet = build_module(unet_factory(configs["unet"]), components.pop("unet"), f"{arch.name} UNet", path)
    vae = build_module(vae_factory(configs["vae"]), components.pop("vae"), f"{arch.name} VAE", path)
    text_encoders = []
    for spec in arch.text_encoders:
        factory = _text_factory(spec.class_name, configs[spec.subfolder])
        text_encoders.append(
            build_module(factory, components.pop(spec.subfolder), f"{arch.name} {spec.subfolder}", path)
        )
    return ModelParts(
        name=path.stem,
        arch=arch.model_arch,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=[clip_tokenizer(pad_token=spec.pad_token) for spec in arch.text_encoders],
        scheduler_config=_scheduler_config(configs["scheduler"], arch.prediction_type),
        path=str(path),
    )


def _component_configs(arch: Architecture, metadata: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Return component configs: those embedded by our converter, else the shipped ones for ``arch``."""
    names = ["unet", "vae", "scheduler", *(spec.subfolder for spec in arch.text_encoders)]
    return {
        name: metadata_json(metadata, CONFIG_METADATA_PREFIX + name) or component_config(arch, name)
        for name in names
    }


def unet_factory(config: dict[str, Any]) -> Callable[[], Any]:
    from diffusers import UNet2DConditionModel

    return lambda: UNet2DConditionModel.from_config(config)


def vae_factory(config: dict[str, Any]) -> Callable[[], Any]:
    from diffusers import AutoencoderKL

    return lambda: AutoencoderKL.from_config(config)


def _text_factory(class_name: str, config: dict[str, Any]) -> Callable[[], Any]:
    from transformers import CLIPTextConfig

    cls = text_class(class_name)
    return lambda: cls(CLIPTextConfig.from_dict(config))


def build_module(factory: Callable[[], Any], state_dict: StateDict | None, what: str, path: Path) -> Any:
    """Build a module with empty (meta) weights and assign ``state_dict`` strictly; SDStudioError on
    mismatch. ``state_dict=None`` leaves the module on ``meta``."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = factory()
    if state_dict is None:
        return module.eval()
    expected = module.state_dict()
    if "text_encoder" in what:
        state_dict = fit_text_keys(state_dict, expected.keys())
    problems = _state_dict_problems(expected, state_dict)
    if problems:
        raise SDStudioError(f"{path.name} does not match the {what} layout: {problems}", field="model")
    module.load_state_dict(state_dict, strict=True, assign=True)
    return module.eval()


def _state_dict_problems(expected: dict[str, torch.Tensor], given: StateDict, show: int = 4) -> str:
    """Return a one-line description of missing, unexpected and mis-shaped keys ("" if none)."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = [
        f"{k} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in given and tuple(given[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatches", mismatched)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > show else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:show])}{more})")
    return "; ".join(parts)


def load_folder_component(folder: Path, prediction_type: str | None, only: str) -> ModelParts:
    """One component of a diffusers folder ("unet", "vae" or "text"), the others None/empty (re-reads)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    index = read_json(folder / "model_index.json")
    arch = folder_architecture(folder, index, read_json(folder / "unet" / "config.json"), prediction_type)
    unet = from_pretrained(UNet2DConditionModel, folder, "unet") if only == "unet" else None
    vae = from_pretrained(AutoencoderKL, folder, "vae") if only == "vae" else None
    encoders = []
    if only == "text":
        encoders = [
            from_pretrained(text_class(s.class_name), folder, s.subfolder) for s in arch.text_encoders
        ]
    return ModelParts(folder.name, arch.model_arch, unet, vae, encoders, [], {}, str(folder))


def read_vae(vae_path: Path, config: dict[str, Any]) -> Any:
    """A VAE from a diffusers folder (``vae/`` or the folder itself) or a single file in LDM or
    diffusers layout (``config``: the model's own VAE config, for single files)."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    if vae_path.is_dir():
        sub = "vae" if (vae_path / "vae" / "config.json").is_file() else ""
        if sub:
            return from_pretrained(AutoencoderKL, vae_path, sub)
        try:
            return AutoencoderKL.from_pretrained(str(vae_path), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SDStudioError(
                f"cannot load a VAE from {vae_path}: {str(exc).splitlines()[0]}", field="vae"
            ) from exc
    state_dict = read_checkpoint(vae_path).state_dict
    if not any(k.startswith("encoder.down_blocks.") for k in state_dict):
        state_dict = convert_ldm_vae_checkpoint(state_dict, config)
    return build_module(vae_factory(config), state_dict, "model's VAE", vae_path)


# ----------------------------------------------------------------------------- the registry entry


def claims_folder(folder: Path, index: dict[str, Any]) -> bool:
    """A diffusers Stable Diffusion folder: a conditional UNet with a text encoder."""
    return (folder / "unet" / "config.json").is_file() and (folder / "text_encoder" / "config.json").is_file()


def claims_file(keys: Collection[str]) -> bool:
    """An original-layout SD UNet (``model.diffusion_model.input_blocks.0.0.weight``)."""
    return UNET_IN_KEY in keys or any(k.startswith(UNET_PREFIX) for k in keys)


def load(path: Path, options: LoadOptions) -> ModelParts:
    """Build an SD model's parts from a folder or a single file (see the module docstring)."""
    if path.is_dir() and options.only:
        return load_folder_component(path, options.prediction_type, options.only)
    if path.is_dir():
        return load_folder(path, options.prediction_type, lazy_unet=options.lazy_unet)
    return load_single_file(path, options.prediction_type, options.dtype, options.lazy_unet, options.only)


def inspect(path: Path, prediction_type: str | None = None) -> ModelInfo:
    """What an SD folder or single file is, without loading the weights (safetensors: header only)."""
    if path.is_dir():
        index = read_json(path / "model_index.json")
        unet_config = read_json(path / "unet" / "config.json")
        arch = folder_architecture(path, index, unet_config, prediction_type)
        size = native_size(unet_config, read_json(path / "vae" / "config.json"))
        params, dtypes = folder_tensor_stats(path)
        fmt = "diffusers"
    else:
        shapes, metadata, global_step = file_header(path)
        arch = detect_architecture(
            shapes, prediction_type=prediction_type, metadata=metadata, global_step=global_step
        )
        configs = _component_configs(arch, metadata)  # embedded by our converter, else shipped
        size = native_size(configs["unet"], configs["vae"])
        params = sum(math.prod(s.shape) for s in shapes.values())
        dtypes = tuple(sorted({s.dtype for s in shapes.values()}))
        fmt = "safetensors" if path.suffix.lower() == ".safetensors" else "pickle"
    return ModelInfo(
        str(path),
        fmt,
        arch.name,
        arch.model_arch,
        arch.inpainting,
        arch.prediction_type,
        params,
        dtypes,
        size,
    )


def family(arch: str) -> Family | None:
    """The SD family of ``arch`` ("sd1", "sd2", "sd2-v", "sdxl"); None for other families' models."""
    return FAMILIES.get(arch.removesuffix("-v"))


LOADER = FamilyLoader("sd", "sd (SD 1.x, 2.x, XL)", claims_folder, claims_file, load, inspect, family)
