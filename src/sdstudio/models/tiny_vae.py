"""Tiny VAE (TAESD, Ollin Boer Bohan 2023, github.com/madebyollin/taesd) as diffusers ``AutoencoderTiny``.

A tiny autoencoder distilled from a model's VAE (``sdstudio train taesd``); fast mode decodes the
final latents with it (:func:`sdstudio.pipelines.components.decode_latents_tiny`).

Latent space: the **sampler's** (UNet's) latents, i.e. after the model's
:class:`~sdstudio.families.sd.architectures.LatentFormat` (``(z - shift) * scale`` of the VAE mean ``z``),
as madebyollin's TAESD for SD 1.x takes latents already multiplied by 0.18215. The decoder input is
``latents / config.scaling_factor + config.shift_factor`` (diffusers' pipeline convention for an
``AutoencoderTiny`` as ``vae``); ours are saved with 1.0 and 0.0, so one tiny VAE decodes the same
latents the UNet makes whatever the teacher's scale and shift, and madebyollin's diffusers folders
(taesd, taesdxl, taesd3: their configs carry their own factors) load the same way.

Shape: ``len(decoder_block_out_channels) - 1`` nearest-neighbour 2x upsamplings, so a VAE that
downsamples ``f = 2**k`` times gets ``k + 1`` stages: SD (f 8): 4 stages, encoder blocks
(1, 3, 3, 3), decoder blocks (3, 3, 3, 1) = madebyollin's layout; the embedded model (f 4): 3.
Decoded images are in [-1, 1], like the VAE's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from sdstudio.errors import SDStudioError

TINY_VAE_FOLDER = "taesd"  # in a model folder: the tiny VAE the loader attaches (model.tiny_vae)
TINY_VAE_CLASS = "AutoencoderTiny"


def tiny_vae_config(
    latent_channels: int, scale_factor: int, channels: int = 64, blocks: int = 3
) -> dict[str, Any]:
    """``AutoencoderTiny`` arguments for a VAE with ``latent_channels`` and ``scale_factor`` pixels per cell.

    ``channels`` is the width of every stage (TAESD: 64); ``blocks`` the residual blocks per stage
    (TAESD: 3; the full-resolution stage always has 1, as in TAESD).
    """
    stages = _stages(scale_factor)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": int(latent_channels),
        "encoder_block_out_channels": (channels,) * stages,
        "decoder_block_out_channels": (channels,) * stages,
        "num_encoder_blocks": (1,) + (blocks,) * (stages - 1),
        "num_decoder_blocks": (blocks,) * (stages - 1) + (1,),
        "upsampling_scaling_factor": 2,
        "scaling_factor": 1.0,  # decodes sampler latents as they are (see the module docstring)
        "shift_factor": 0.0,
    }


def _stages(scale_factor: int) -> int:
    k = int(math.log2(scale_factor)) if scale_factor >= 2 else 0
    if scale_factor < 2 or 2**k != scale_factor:
        raise SDStudioError(
            f"a tiny VAE needs a power-of-two VAE downscale factor >= 2, got {scale_factor}", field="tiny_vae"
        )
    return k + 1


def build_tiny_vae(
    latent_channels: int, scale_factor: int, channels: int = 64, blocks: int = 3, seed: int | None = 0
):
    """Return a freshly initialised ``AutoencoderTiny`` (seeded unless ``seed`` is None)."""
    from diffusers import AutoencoderTiny

    if seed is not None:
        torch.manual_seed(seed)
    return AutoencoderTiny(**tiny_vae_config(latent_channels, scale_factor, channels, blocks))


def tiny_vae_for(model, channels: int = 64, blocks: int = 3, seed: int | None = 0):
    """Return a fresh ``AutoencoderTiny`` shaped for ``model``'s VAE (latent channels, downscale factor)."""
    return build_tiny_vae(model.latent_channels, model.vae_scale_factor, channels, blocks, seed)


def tiny_vae_scale_factor(tiny) -> int:
    """Pixels per latent cell of a tiny VAE: ``upsampling_scaling_factor ** (stages - 1)``."""
    cfg = tiny.config
    return int(cfg.upsampling_scaling_factor) ** (len(cfg.decoder_block_out_channels) - 1)


def check_tiny_vae(tiny, latent_channels: int, scale_factor: int, where: str = "tiny VAE") -> None:
    """Raise SDStudioError unless ``tiny`` decodes ``latent_channels``-channel latents ``scale_factor`` x up."""
    have = (int(tiny.config.latent_channels), tiny_vae_scale_factor(tiny))
    if have != (int(latent_channels), int(scale_factor)):
        raise SDStudioError(
            f"{where} decodes {have[0]}-channel latents {have[1]}x up, but the model's VAE has "
            f"{latent_channels} channels and factor {scale_factor}; distil one with `sdstudio train taesd`",
            field="tiny_vae",
        )


def load_tiny_vae(path: str | Path, dtype: torch.dtype | None = None):
    """Load an ``AutoencoderTiny`` from a diffusers folder (``config.json`` + safetensors), offline."""
    from diffusers import AutoencoderTiny

    folder = Path(path).expanduser()
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise SDStudioError(
            f"tiny VAE not found: {folder} (expected a diffusers AutoencoderTiny folder)", field="tiny_vae"
        )
    if not config_file.is_file():
        raise SDStudioError(f"tiny VAE folder {folder} has no config.json", field="tiny_vae")
    try:
        class_name = json.loads(config_file.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError) as exc:
        raise SDStudioError(f"cannot read {config_file}: {exc}", field="tiny_vae") from exc
    if class_name != TINY_VAE_CLASS:
        raise SDStudioError(
            f"{folder} holds a {class_name!r}, not a tiny VAE ({TINY_VAE_CLASS})", field="tiny_vae"
        )
    try:
        tiny = AutoencoderTiny.from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True, torch_dtype=dtype
        )
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise SDStudioError(
            f"cannot load the tiny VAE in {folder}: {str(exc).splitlines()[0]}", field="tiny_vae"
        ) from exc
    return tiny.eval().requires_grad_(False)


def save_tiny_vae(tiny, folder: str | Path, *, half: bool = False) -> Path:
    """Write ``tiny`` as a diffusers folder (``config.json``, safetensors; ``half``: fp16 weights)."""
    import copy

    out = Path(folder)
    module = copy.deepcopy(tiny).half() if half else tiny
    module.save_pretrained(out, safe_serialization=True)
    # AutoencoderTiny registers block_out_channels itself; in the file it only makes loading warn
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config.pop("block_out_channels", None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def tiny_decode(tiny, latents: torch.Tensor, compiled=None) -> torch.Tensor:
    """Decode sampler latents ``(B, C, h, w)`` to images ``(B, 3, H, W)`` in [-1, 1], float32.

    ``compiled``: the same decoder compiled by another runtime (``OpenVINODecoder``), run while it
    matches ``tiny``."""
    z = latents / float(tiny.config.scaling_factor) + float(tiny.config.shift_factor)  # (B, C, h, w)
    if compiled is not None and compiled.matches(tiny):
        return compiled.decode(z.float())
    p = next(tiny.parameters())
    return tiny.decode(z.to(p.device, p.dtype), return_dict=False)[0].float()


def tiny_encode(tiny, images: torch.Tensor) -> torch.Tensor:
    """Encode images ``(B, 3, H, W)`` in [-1, 1] to sampler latents ``(B, C, h, w)``, float32."""
    p = next(tiny.parameters())
    z = tiny.encode(images.to(p.device, p.dtype), return_dict=False)[0].float()
    return (z - float(tiny.config.shift_factor)) * float(tiny.config.scaling_factor)
