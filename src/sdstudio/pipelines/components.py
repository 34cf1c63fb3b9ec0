"""Model-side pieces the sampling loop needs: the model as a k-diffusion denoiser, VAE encode/decode.

``ModelDenoiser`` is ``D(x, sigma, cond) -> x0`` over the family's :class:`ModelSampling` (input
scaling, timestep, eps/v -> x0) and its one model-call door ``family.apply_model`` (k-diffusion
``CompVisDenoiser`` / ``CompVisVDenoiser``; ComfyUI ``BaseModel.apply_model``). Nothing here knows
which family it runs, or the latent's rank.
"""

from __future__ import annotations

import copy

import torch

from sdstudio.errors import SDStudioError
from sdstudio.models.tiny_vae import tiny_decode
from sdstudio.prompts.encode import Conditioning


class ModelDenoiser:
    """``D(x, sigma, cond) -> x0`` for a loaded model (fp32 in/out, model dtype inside)."""

    def __init__(self, model, sampling=None, unet=None) -> None:
        self.model = model
        self.sampling = sampling if sampling is not None else model.sampling  # families.model_sampling
        self.unet = unet if unet is not None else model.unet  # or a caching wrapper (pipelines.deepcache)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        m, ms = self.model, self.sampling
        x_in = ms.calculate_input(sigma, x)  # (B, C, ...)
        t = ms.timestep(sigma).to(m.device)
        out = m.family.apply_model(self.unet, x_in, t, cond, m.device, m.dtype).float().to(x.device)
        return ms.calculate_denoised(sigma, out, x)


@torch.no_grad()
def decode_latents(model, latents: torch.Tensor) -> torch.Tensor:
    """VAE-decode (B, C, h, w) latents to (B, 3, H, W) images in [0, 1], float32.

    A VAE whose config says ``force_upcast`` (the SDXL VAE: it overflows in fp16) decodes in fp32 from
    the start, as diffusers' pipelines do. Another VAE whose reduced-precision decode produces NaN/Inf
    is decoded again in fp32 (A1111 "automatically revert VAE to 32-bit floats"); if fp32 fails too, a SDStudioError is raised: never a black image saved silently.
    A pixel-space model (no VAE) has the image itself as its latent, in [-1, 1].
    """
    if model.vae is None:
        images = model.latent_format.to_vae(latents.float())  # (B, 3, H, W)
        if not torch.isfinite(images).all():
            raise SDStudioError("the model produced NaN/Inf values; its weights may be corrupt")
        return ((images + 1) / 2).clamp(0, 1)
    images = _decode(model, latents, decode_dtype(model))
    if not torch.isfinite(images).all() and decode_dtype(model) != torch.float32:
        images = _decode(model, latents, torch.float32)
    if not torch.isfinite(images).all():
        raise SDStudioError("the VAE produced NaN/Inf values even in fp32; the model weights may be corrupt")
    return ((images + 1) / 2).clamp(0, 1)


@torch.no_grad()
def decode_latents_tiny(model, latents: torch.Tensor) -> torch.Tensor:
    """Decode (B, C, h, w) latents with the model's tiny VAE (TAESD) to (B, 3, H, W) in [0, 1], float32.

    Falls back to :func:`decode_latents` (the full VAE) when the tiny decode is not finite.
    """
    images = tiny_decode(model.tiny_vae, latents, model.compiled_tiny_decoder)  # (B, 3, H, W)
    if not torch.isfinite(images).all():
        return decode_latents(model, latents)
    return ((images + 1) / 2).clamp(0, 1)


def decode_dtype(model) -> torch.dtype:
    """The VAE decode precision: fp32 where the model runs fp16 and its VAE config says ``force_upcast``."""
    if model.dtype == torch.float16 and bool(model.vae.config.get("force_upcast", False)):
        return torch.float32
    return model.dtype


def _decode(model, latents: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    vae = model.vae
    original = next(vae.parameters()).dtype
    z = model.latent_format.to_vae(latents)  # (B, C, h, w)
    compiled = model.compiled_decoder
    if compiled is not None and dtype == original and compiled.matches(vae):
        if model.compiled_unet is not None:  # sampling is done: the UNet's buffers go first
            model.compiled_unet.release_scratch()
        return compiled.decode(z)  # (B, 3, H, W)
    model.ensure_torch_decoder()  # the backend may have freed the PyTorch decoder's weights
    if dtype != original:  # a cast copy: casting in place and back would give the weights new
        vae = copy.deepcopy(vae).to(dtype)  # storages, and a compiled decoder would stop matching
    return vae.decode(z.to(model.device, dtype), return_dict=False)[0].float()


@torch.no_grad()
def encode_images(model, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """VAE-encode (B, 3, H, W) images in [0, 1] to scaled latents (B, C, H/f, W/f), using the mean."""
    if model.vae is None:  # pixel space: the image in [-1, 1] is the latent
        return model.latent_format.to_latent(images.float() * 2 - 1)
    x = (images * 2 - 1).to(model.device, model.dtype)
    dist = model.vae.encode(x).latent_dist
    return model.latent_format.to_latent(dist.mean.float())


def to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) floats in [0, 1] -> list of PIL RGB images (rounded like A1111: x*255 + 0.5)."""
    from PIL import Image

    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).clip(0, 255).astype("uint8")
    return [Image.fromarray(a, "RGB") for a in arr]


def signed_to_pil(x: torch.Tensor) -> list:
    """(B, 3, H, W) floats in [-1, 1] (a pixel-space model's or a trainer's output) -> PIL RGB images,
    rounded to nearest (the trainers' previews and the lab's frames)."""
    from PIL import Image

    arr = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]


def from_pil(images: list, size: tuple[int, int] | None = None) -> torch.Tensor:
    """List of PIL images -> (B, 3, H, W) float tensor in [0, 1]."""
    import numpy as np

    arrays = [
        np.asarray((im.convert("RGB").resize(size) if size else im.convert("RGB")), dtype="float32") / 255
        for im in images
    ]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def preview_image(model, latents: torch.Tensor) -> object:
    """Live preview of the first latent (B, C, h, w) as PIL: the architecture's linear latent -> RGB map
    (A1111 "Approx cheap"), or, when the model's latent space has no published map, a decode by its
    tiny VAE (A1111 live preview "TAESD") if it has one, else by its VAE."""
    from PIL import Image

    factors = model.latent_format.rgb_factors
    lat = latents[:1].float()
    if factors is None or len(factors) != lat.shape[1]:
        decode = decode_latents_tiny if model.tiny_vae is not None else decode_latents
        return to_pil(decode(model, lat))[0]
    coefs = torch.tensor(factors)  # (C, 3)
    rgb = torch.einsum("chw,cr->hwr", lat[0].cpu(), coefs)
    arr = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    return Image.fromarray(arr, "RGB")
