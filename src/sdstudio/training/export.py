"""Assemble trained parts into a diffusers Stable Diffusion folder (the layout of ``runwayml/stable-diffusion-v1-5``).

``model_index.json`` names ``StableDiffusionPipeline`` with ``tokenizer/``, ``text_encoder/``,
``unet/``, ``vae/`` and ``scheduler/`` (safety checker and feature extractor null), so diffusers'
``from_pretrained`` and sdstudio's loader read it like any SD 1.x checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

# SD 1.x's scheduler/scheduler_config.json (PNDM, skip_prk_steps) - what SD folders ship
SD_STYLE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "skip_prk_steps": True,
    "trained_betas": None,
}

MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
    "safety_checker": [None, None],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def save_scheduler(config: dict, out: Path) -> None:
    """Write ``scheduler_config.json`` (PNDM class name, SD's keys) for a training schedule ``config``."""
    out.mkdir(parents=True, exist_ok=True)
    data = {**SD_STYLE_SCHEDULER, **config}
    (out / "scheduler_config.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def assemble_sd_folder(
    vae_dir: Path,
    clip_dir: Path,
    unet_dir: Path,
    scheduler_dir: Path,
    out: Path,
    dtype: torch.dtype = torch.float16,
    miniclip: bool = True,
) -> Path:
    """Write a StableDiffusionPipeline-layout folder at ``out`` from the trainers' ``final/`` parts.

    Weights are converted to ``dtype`` (fp16 for the shipped model) and saved as safetensors;
    ``clip_dir``'s image tower (``miniclip.safetensors``) is kept beside, under ``miniclip/``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    AutoencoderKL.from_pretrained(str(vae_dir), local_files_only=True).to(dtype).save_pretrained(
        out / "vae", safe_serialization=True
    )
    UNet2DConditionModel.from_pretrained(str(unet_dir), local_files_only=True).to(dtype).save_pretrained(
        out / "unet", safe_serialization=True
    )
    text = CLIPTextModel.from_pretrained(
        str(Path(clip_dir) / "text_encoder"), dtype=torch.float32, local_files_only=True
    )
    text.to(dtype).save_pretrained(out / "text_encoder", safe_serialization=True)
    shutil.copytree(Path(clip_dir) / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    shutil.copytree(scheduler_dir, out / "scheduler", dirs_exist_ok=True)
    (out / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2) + "\n")
    if miniclip:
        _copy_miniclip(Path(clip_dir), out / "miniclip", dtype)
    return out


def _copy_miniclip(clip_dir: Path, out: Path, dtype: torch.dtype) -> None:
    """Copy the mini-CLIP image tower and projections (``dtype``), reusing the folder's text_encoder."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.to(dtype).contiguous() for k, v in load_file(clip_dir / "miniclip.safetensors").items()}
    save_file(state, out / "miniclip.safetensors")
    shutil.copy2(clip_dir / "miniclip.json", out / "miniclip.json")


def folder_size(path: Path) -> int:
    """Return the total bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
