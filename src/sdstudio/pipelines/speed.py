"""Opt-in speed techniques for the sampling loop (``--fast``, API ``fast``, A1111 ``s_min_uncond``).

Off by default: a request without them samples bit-identically to the plain path. What each
technique costs in quality and gains in time is measured by ``bench/suite.py`` and
``bench/quality_steps.py`` (BENCHMARKS.md). ``fast`` = DeepCache with interval 3.

* negative guidance minimum sigma (A1111 ``s_min_uncond``, "NGMS"): below that sigma the
  unconditional UNet pass is skipped on alternate calls (A1111), or on every call (A1111's "NGMS
  all steps" option, i.e. CFG truncation at low noise; measured, not used by fast mode);
* DeepCache (Ma et al. 2023): the deep UNet features are reused for ``interval - 1`` calls out of
  ``interval`` (:mod:`sdstudio.pipelines.deepcache`);
* token merging (Bolya & Hoffman 2023, ToMe; A1111 ``token_merging_ratio``): the top-level
  self-attention runs on ``1 - ratio`` of the tokens (:mod:`sdstudio.pipelines.tome`); composes
  with DeepCache (both its full and its shallow calls merge);
* int8 UNet (OpenVINO backend only): the UNet's graphs quantised to int8 weights and activations
  by NNCF, calibrated once per checkpoint on a few sampling jobs
  (:class:`sdstudio.backends.openvino.Int8UNet`; AVX-512 VNNI runs int8 at about twice the
  bf16 rate); a model on PyTorch samples as before;
* token downsampling (Smith et al. 2024, ToDo; :mod:`sdstudio.families.sd.token_downsampling`): at the
  UNet's full-resolution level the self-attention attends to keys/values of every 2nd token in each
  direction, at sizes whose level has at least ``TODO_MIN_TOKENS`` tokens (SD 1.5 from 512x512 on),
  where those attentions are most of a DeepCache shallow call; on OpenVINO it is part of the int8
  twin's graphs (a second int8 build, ``unet-int8c<v>-todo2``), on PyTorch a per-call wrapper;
* tiny VAE decode (TAESD, :mod:`sdstudio.models.tiny_vae`): the final latents are decoded by the
  model's tiny VAE when it has one (A1111 "VAE type for decode: TAESD", infotext ``VAE Decoder:
  TAESD``); a model without one decodes with its full VAE as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.families.sd.token_downsampling import ToDoUNet, supports_token_downsampling
from sdstudio.families.sd.unet_split import supports_split
from sdstudio.pipelines.components import decode_latents, decode_latents_tiny
from sdstudio.pipelines.deepcache import DeepCacheUNet
from sdstudio.pipelines.tome import ToMeUNet, supports_tome

FAST_DEEPCACHE_INTERVAL = 3  # DeepCache's own SD default (cache_interval=3, shallowest branch)
FAST_MIN_UNCOND_SIGMA = 0.0  # NGMS in fast mode: off (measured: adds quality cost for ~10% of the rows)
FAST_UNCOND_EVERY_STEP = False  # True = "NGMS all steps" (measured: too lossy, BENCHMARKS.md)
FAST_TOME_RATIO = 0.0  # ToMe in fast mode: off (measured: see bench/tome_speed.py, BENCHMARKS.md)
TOME_MAX_DOWNSAMPLE = 1  # UNet levels ToMe merges at: tomesd's and A1111's default (full resolution only)
FAST_INT8 = True  # fast mode runs the int8 UNet where the OpenVINO UNet runs (BENCHMARKS.md)
FAST_TODO_FACTOR = 2  # ToDo's default factor, in fast mode at large sizes (BENCHMARKS.md)
TODO_MIN_TOKENS = 4096  # full-resolution tokens from which ToDo applies: 64x64 latents, SD 1.5 at 512x512
FAST_TINY_VAE = True  # decode with the model's tiny VAE when it has one (BENCHMARKS.md)
TINY_VAE_INFOTEXT = {"VAE Decoder": "TAESD"}  # A1111's infotext for sd_vae_decode_method = TAESD


@dataclass(frozen=True)
class SpeedOptions:
    """How one batch is sampled faster than the plain path (defaults: not at all)."""

    s_min_uncond: float = 0.0
    uncond_every_step: bool = False
    deepcache_interval: int = 1  # 1 = off
    tome_ratio: float = 0.0  # 0 = off
    tome_max_downsample: int = 1  # merge at UNet levels down to 1/2**(n-1) resolution
    tiny_vae: bool = False  # final decode by the model's tiny VAE (if it has one)
    int8: bool = False  # the OpenVINO UNet's int8 twin, where the OpenVINO UNet would run
    todo_factor: int = 1  # token downsampling of the full-resolution self-attention (1 = off)
    todo_min_tokens: int = TODO_MIN_TOKENS  # ... at latent sizes with at least this many tokens

    @property
    def is_default(self) -> bool:
        return self == SpeedOptions()

    @classmethod
    def from_request(cls, request) -> SpeedOptions:
        """The options a request asks for: ``fast``, A1111's ``s_min_uncond`` and ``token_merging_ratio``."""
        s_min = float(getattr(request, "s_min_uncond", 0.0) or 0.0)
        tome = float(getattr(request, "token_merging_ratio", 0.0) or 0.0)
        if not getattr(request, "fast", False):
            return cls(s_min_uncond=s_min, tome_ratio=tome, tome_max_downsample=TOME_MAX_DOWNSAMPLE)
        return cls(
            s_min_uncond=s_min or FAST_MIN_UNCOND_SIGMA,  # the request's NGMS still applies
            uncond_every_step=FAST_UNCOND_EVERY_STEP,
            deepcache_interval=FAST_DEEPCACHE_INTERVAL,
            tome_ratio=tome or FAST_TOME_RATIO,  # the request's ratio still applies
            tome_max_downsample=TOME_MAX_DOWNSAMPLE,
            tiny_vae=FAST_TINY_VAE,
            int8=FAST_INT8,
            todo_factor=FAST_TODO_FACTOR,
            todo_min_tokens=TODO_MIN_TOKENS,
        )

    def todo_at(self, latent_hw: tuple[int, int]) -> int:
        """The token downsampling factor for latents of ``latent_hw`` (h, w): 1 below ``todo_min_tokens``."""
        h, w = latent_hw
        return self.todo_factor if self.todo_factor > 1 and h * w >= self.todo_min_tokens else 1

    def unet_for(self, unet, compiled=None, todo: int = 1):
        """The UNet callable for one batch: fresh DeepCache / ToMe / ToDo wrappers of ``unet``, the
        ``compiled`` UNet (another runtime's, e.g. OpenVINO; with ``int8``, pass its int8 twin, which
        has ToDo in its graphs) while it still matches ``unet``'s weights, or ``unet`` itself.
        DeepCache runs its full and shallow calls on ``compiled`` when it matches; ToMe needs the
        PyTorch UNet (it wraps its attention processors). ``todo``: :meth:`todo_at` the batch's
        latent size, applied here to the PyTorch UNet only."""
        tome = self.tome_ratio > 0 and supports_tome(unet)
        usable = None if self.needs_torch_unet(unet, compiled) else compiled
        if self.deepcache_interval > 1 and supports_split(unet):
            out = DeepCacheUNet(unet, self.deepcache_interval, usable)
        elif usable is not None:
            return usable
        else:
            out = unet
        if tome:  # outermost, so that DeepCache's shallow calls merge too
            out = ToMeUNet(out, unet, self.tome_ratio, self.tome_max_downsample)
        if todo > 1 and usable is None and supports_token_downsampling(unet):
            out = ToDoUNet(out, unet, todo)
        return out

    def needs_torch_unet(self, unet, compiled=None) -> bool:
        """True when :meth:`unet_for` runs the PyTorch ``unet`` (no ``compiled`` one that matches, or ToMe)."""
        tome = self.tome_ratio > 0 and supports_tome(unet)
        return compiled is None or tome or not compiled.matches(unet)

    def uses_tiny_vae(self, model) -> bool:
        return self.tiny_vae and model.tiny_vae is not None

    def decode(self, model, latents: torch.Tensor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Final images (B, 3, H, W) in [0, 1] and their infotext extras: the tiny VAE's decode when
        asked for and present (``VAE Decoder: TAESD``), else the full VAE's (no extras)."""
        if self.uses_tiny_vae(model):
            return decode_latents_tiny(model, latents), dict(TINY_VAE_INFOTEXT)
        return decode_latents(model, latents), {}
