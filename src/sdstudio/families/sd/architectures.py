"""Supported Stable Diffusion architectures, one small record each (ComfyUI ``supported_models`` style).

Each :class:`Architecture` names its shipped diffusers config folder
(``families/sd/assets/configs/<name>/``), the original (CompVis/A1111) key prefixes of its text
encoders and whether its UNet is a 9-channel inpainting UNet. Detection from a state dict lives in
``sdstudio.families.sd.detect``; the key maps in ``sdstudio.families.sd.keymap``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdstudio.families.base import LatentFormat
from sdstudio.families.model_sampling import DiscreteModelSampling
from sdstudio.prompts.encode import ClipLayout, Conditioning, count_chunks, encode_prompts, text_embeddings

CONFIGS_DIR = Path(__file__).parent / "assets" / "configs"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
OPENAI_PAD = "<|endoftext|>"  # OpenAI CLIP (SD 1.x, SDXL encoder 1) pads with EOS
OPENCLIP_PAD = "!"  # OpenCLIP (SD 2.x, SDXL encoder 2) pads with token 0


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder: its original-layout prefix, key layout and diffusers subfolder/class."""

    prefix: str  # e.g. "cond_stage_model.transformer." or "conditioner.embedders.1.model."
    layout: (
        str  # "clip" (transformers CLIPTextModel keys under text_model.) or "openclip" (resblocks, fused qkv)
    )
    subfolder: str  # "text_encoder" | "text_encoder_2"
    class_name: str  # "CLIPTextModel" | "CLIPTextModelWithProjection"
    pad_token: str
    marker: str  # a key (after the prefix) that every checkpoint of this layout has

    @property
    def marker_key(self) -> str:
        return self.prefix + self.marker

    @property
    def tokenizer_subfolder(self) -> str:
        return self.subfolder.replace("text_encoder", "tokenizer")


SD1_TEXT = TextEncoderSpec(
    "cond_stage_model.transformer.",
    "clip",
    "text_encoder",
    "CLIPTextModel",
    OPENAI_PAD,
    "text_model.embeddings.position_embedding.weight",
)
SD2_TEXT = TextEncoderSpec(
    "cond_stage_model.model.",
    "openclip",
    "text_encoder",
    "CLIPTextModel",
    OPENCLIP_PAD,
    "token_embedding.weight",
)
SDXL_TEXT_1 = TextEncoderSpec(
    "conditioner.embedders.0.transformer.",
    "clip",
    "text_encoder",
    "CLIPTextModel",
    OPENAI_PAD,
    "text_model.embeddings.position_embedding.weight",
)
SDXL_TEXT_2 = TextEncoderSpec(
    "conditioner.embedders.1.model.",
    "openclip",
    "text_encoder_2",
    "CLIPTextModelWithProjection",
    OPENCLIP_PAD,
    "positional_embedding",
)


CLIP_LAST_LAYER = ClipLayout()  # SD 1.x/2.x: last hidden state after the final layer norm
SD_RGB_FACTORS = (  # A1111 cheap approximation for the SD 1.x/2.x VAE
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SDXL_RGB_FACTORS = (  # A1111 cheap approximation for the SDXL VAE
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


@dataclass(frozen=True)
class Family:
    """An SD UNet family (SD 1.x, SD 2.x or SDXL): its text encoders, UNet context width and the
    family's side of the denoiser door (:class:`sdstudio.families.base.ModelFamily`)."""

    name: str  # "sd1" | "sd2" | "sdxl"
    text_encoders: tuple[TextEncoderSpec, ...]
    context_dim: int  # UNet cross-attention width of the full-size model (attn2.to_k input)
    pipeline_class: str
    rgb_factors: tuple[tuple[float, float, float], ...] = SD_RGB_FACTORS
    clip_layout: ClipLayout = CLIP_LAST_LAYER
    micro_conditioning: bool = False  # SDXL's size/crop ``time_ids``
    pixel_space: bool = False
    speed_techniques: tuple[str, ...] = ("deepcache", "tome", "todo", "openvino")

    @property
    def defaults(self) -> dict[str, Any]:
        """Request defaults of the family itself: none (the front end's, or a folder's sdstudio.json)."""
        return {}

    def latent_format(self, vae_config: dict[str, Any]) -> LatentFormat:
        """The latent format of a VAE with ``vae_config``: the family's preview colours only when the VAE
        has the family's published layout (a VAE trained from scratch has a latent space of its own)."""
        shipped = component_config(ARCHITECTURES[self.name], "vae")
        published = all(
            vae_config.get(k) == shipped.get(k) for k in ("block_out_channels", "latent_channels")
        )
        return LatentFormat(
            float(vae_config.get("scaling_factor") or shipped["scaling_factor"]),
            float(vae_config.get("shift_factor") or 0.0),
            self.rgb_factors if published else None,
        )

    def model_sampling(self, scheduler_config: dict[str, Any]) -> DiscreteModelSampling:
        """eps or v on the model's discrete DDPM schedule (``prediction_type`` of the config)."""
        return DiscreteModelSampling.from_config(scheduler_config)

    def count_chunks(self, model: Any, text: str) -> int:
        """75-token chunks ``text`` takes (A1111 long prompts; textual inversion counted)."""
        return count_chunks(model.tokenizers[0], text, text_embeddings(model)[0])

    def encode_text(self, model: Any, text: str, clip_skip: int, chunks: int, width: int, height: int):
        """One prompt's :class:`Conditioning` (1 row): CLIP context, SDXL pooled and ``time_ids``."""
        cond = encode_prompts(model, [text], clip_skip, chunks)
        if self.micro_conditioning:  # SDXL: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
            cond.extra["time_ids"] = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
        return cond

    def apply_model(
        self, unet: Any, x_in: torch.Tensor, t: torch.Tensor, cond: Conditioning, device, dtype
    ) -> torch.Tensor:
        """The one model-call door: the UNet's raw output for scaled input ``x_in`` (B, C, h, w).

        Extra inputs are data in ``cond``: ``extra["concat"]`` channels (9-channel inpainting:
        [latent, mask, masked-image latent]), SDXL's pooled ``text_embeds`` and ``time_ids``.
        """
        if "concat" in cond.extra:
            x_in = torch.cat([x_in, cond.extra["concat"].to(x_in)], dim=1)  # (B, 9, h, w)
        added = None
        if cond.pooled is not None:
            added = {
                "text_embeds": cond.pooled.to(device, dtype),
                "time_ids": cond.extra["time_ids"].to(device, dtype),
            }
        return unet(
            x_in.to(device, dtype),
            t,
            encoder_hidden_states=cond.context.to(device, dtype),
            added_cond_kwargs=added,
            return_dict=False,
        )[0]


FAMILIES: dict[str, Family] = {
    "sd1": Family("sd1", (SD1_TEXT,), 768, "StableDiffusionPipeline"),
    "sd2": Family("sd2", (SD2_TEXT,), 1024, "StableDiffusionPipeline"),
    "sdxl": Family(
        "sdxl",
        (SDXL_TEXT_1, SDXL_TEXT_2),
        2048,
        "StableDiffusionXLPipeline",
        SDXL_RGB_FACTORS,
        ClipLayout(penultimate_raw=True, pooled_encoders=(1,)),
        micro_conditioning=True,
    ),
}


@dataclass(frozen=True)
class Architecture:
    """A concrete architecture = family + inpainting + prediction type; names its config folder."""

    name: str  # config folder: "sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint"
    family: Family
    inpainting: bool = False
    prediction_type: str = "epsilon"

    @property
    def model_arch(self) -> str:
        """``StableDiffusionModel.arch``: "sd1" | "sd2" | "sd2-v" | "sdxl" (inpainting is a UNet property)."""
        if self.family.name == "sd2" and self.prediction_type == "v_prediction":
            return "sd2-v"
        return self.family.name

    @property
    def in_channels(self) -> int:
        return 9 if self.inpainting else 4

    @property
    def config_dir(self) -> Path:
        return CONFIGS_DIR / self.name

    @property
    def text_encoders(self) -> tuple[TextEncoderSpec, ...]:
        return self.family.text_encoders


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        Architecture("sd1", FAMILIES["sd1"]),
        Architecture("sd1-inpaint", FAMILIES["sd1"], inpainting=True),
        Architecture("sd2", FAMILIES["sd2"]),
        Architecture("sd2-v", FAMILIES["sd2"], prediction_type="v_prediction"),
        Architecture("sd2-inpaint", FAMILIES["sd2"], inpainting=True),
        Architecture("sdxl", FAMILIES["sdxl"]),
        Architecture("sdxl-inpaint", FAMILIES["sdxl"], inpainting=True),
    )
}


def architecture_for(family: str, *, inpainting: bool, prediction_type: str) -> Architecture:
    """Return the architecture of ``family`` with the given UNet inputs and prediction type.

    A v-prediction SD 2.x model is ``sd2-v``; v-prediction for other families (rare fine-tunes) keeps
    the family's config and only changes the scheduler's ``prediction_type``.
    """
    if family == "sd2" and not inpainting:
        name = "sd2-v" if prediction_type == "v_prediction" else "sd2"
    else:
        name = family + ("-inpaint" if inpainting else "")
    arch = ARCHITECTURES[name]
    if arch.prediction_type != prediction_type:
        arch = Architecture(arch.name, arch.family, arch.inpainting, prediction_type)
    return arch


def read_json(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def component_config(arch: Architecture, subfolder: str) -> dict[str, Any]:
    """Return the shipped diffusers/transformers config dict of one component (``unet``, ``vae``, ...)."""
    name = "scheduler_config.json" if subfolder == "scheduler" else "config.json"
    return read_json(arch.config_dir / subfolder / name)


def materialize_config_folder(arch: Architecture, dest: str | Path) -> Path:
    """Write a complete diffusers config folder (JSON configs + tokenizer files) to ``dest``; return it.

    The shipped folders hold only JSON; the tokenizer vocabulary is added here from the one shipped
    copy (``families/sd/assets/tokenizer``), so the result can be passed to diffusers'
    ``from_single_file(path, config=dest, local_files_only=True)``.
    """
    from sdstudio.families.sd.tokenizer import TOKENIZER_DIR

    dest = Path(dest)
    shutil.copytree(arch.config_dir, dest, dirs_exist_ok=True)
    for spec in arch.text_encoders:
        tok_dir = dest / spec.tokenizer_subfolder
        tok_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copyfile(TOKENIZER_DIR / name, tok_dir / name)
    return dest
