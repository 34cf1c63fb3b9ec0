"""Reading SD 3 / 3.5 diffusers folders (``StableDiffusion3Pipeline`` layout), offline."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.families.base import (
    FamilyLoader,
    LoadOptions,
    ModelInfo,
    ModelParts,
    folder_tensor_stats,
    native_size,
    read_json_file,
)
from sdstudio.families.sd3.family import ARCH, FAMILY, SD3Family

PIPELINE_CLASS = "StableDiffusion3Pipeline"


def claims_folder(folder: Path, index: dict[str, Any]) -> bool:
    return index.get("_class_name") == PIPELINE_CLASS


def claims_file(keys: Collection[str]) -> bool:
    return False  # single files: not yet (the diffusers folder carries the tokenizers and configs)


def load(path: Path, options: LoadOptions) -> ModelParts:
    """The transformer, VAE, CLIP-L/G (+ T5 when the folder has it) and their tokenizers."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    has_t5 = (path / "text_encoder_3" / "config.json").is_file()
    encoders = [_pretrained(CLIPTextModelWithProjection, path, f) for f in ("text_encoder", "text_encoder_2")]
    tokenizers = [_pretrained(CLIPTokenizer, path, f) for f in ("tokenizer", "tokenizer_2")]
    if has_t5:
        from transformers import T5EncoderModel, T5TokenizerFast

        encoders.append(_pretrained(T5EncoderModel, path, "text_encoder_3"))
        tokenizers.append(_pretrained(T5TokenizerFast, path, "tokenizer_3"))
    transformer = _pretrained(SD3Transformer2DModel, path, "transformer")
    vae = _pretrained(AutoencoderKL, path, "vae")
    scheduler = {k: v for k, v in read_json_file(path / "scheduler" / "scheduler_config.json").items()}
    return ModelParts(path.name, ARCH, transformer, vae, encoders, tokenizers, scheduler, str(path))


def inspect(path: Path, prediction_type: str | None = None) -> ModelInfo:
    params, dtypes = folder_tensor_stats(path, "*/*.safetensors")
    transformer = read_json_file(path / "transformer" / "config.json")
    size = native_size(transformer, read_json_file(path / "vae" / "config.json"))
    return ModelInfo(str(path), "diffusers", ARCH, ARCH, False, "flow", params, dtypes, size)


def family(arch: str) -> SD3Family | None:
    return FAMILY if arch == ARCH else None


def _pretrained(cls: Any, folder: Path, subfolder: str) -> Any:
    try:
        if cls.__name__.endswith("Tokenizer") or cls.__name__.endswith("TokenizerFast"):
            return cls.from_pretrained(str(folder / subfolder), local_files_only=True)
        return cls.from_pretrained(str(folder), subfolder=subfolder, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SDStudioError(
            f"cannot load {subfolder} from {folder}: {str(exc).splitlines()[0]}", field="model"
        ) from exc


LOADER = FamilyLoader(
    "sd3", "sd3 (SD 3 / 3.5 diffusers folders)", claims_folder, claims_file, load, inspect, family
)
