"""``train lora``: LoRA fine-tuning (Hu et al. 2021) of any checkpoint's UNet with peft, saved in kohya format.

peft injects rank-``r`` adapters ``W + (alpha / r) * B @ A`` into the UNet's attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``; optionally the transformer blocks' feed-forward and
projection layers); the base weights stay frozen. The loss is Stable Diffusion's: MSE between the
UNet output and eps (or v) on the model's own noise schedule, with captions encoded exactly as
generation encodes prompts (:func:`sdstudio.prompts.encode.encode_prompts`, clip skip 1; SDXL also
gets its pooled embedding and size conditioning). Only the adapter weights are checkpointed, so
``--resume`` is exact and cheap. The export is a kohya/A1111 ``.safetensors`` LoRA:
``lora_unet_<module path with _>.lora_down.weight`` (= peft ``lora_A``), ``.lora_up.weight``
(= ``lora_B``) and ``.alpha``, with ``ss_*`` metadata; SDXL files use the original (SGM) UNet names
as kohya's SDXL trainer does. ``<lora:NAME:1>`` then reproduces the trained adapter exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdstudio.errors import SDStudioError
from sdstudio.training import diffusion
from sdstudio.training.data import ImageTextSet
from sdstudio.training.loop import LoopConfig, LoopResult, image_grid, train_loop

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
EXTRA = ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2")
CONVS = ("conv1", "conv2")  # resnet convolutions (LoCon): what colour and texture live in


@dataclass
class LoraConfig:
    """Adapter size and what the sample grids show."""

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ATTENTION
    caption_dropout: float = 0.0
    name: str = "lora"
    preview_prompts: tuple[str, ...] = ()
    preview_steps: int = 15
    preview_cfg: float = 5.0
    preview_seed: int = 1
    size: int = 0  # training/preview size in pixels (0 = the model's native size)
    extra_metadata: dict = field(default_factory=dict)


def target_modules(unet: nn.Module, suffixes: tuple[str, ...]) -> list[str]:
    """Full paths of the UNet's Linear/Conv layers ending in one of ``suffixes`` (attention and
    feed-forward names inside transformer blocks, ``conv1``/``conv2`` inside resnets)."""
    out = []
    for path, module in unet.named_modules():
        wanted = any(path == s or path.endswith("." + s) for s in suffixes)
        block = "attentions" in path or ("resnets" in path and path.rsplit(".", 1)[-1] in CONVS)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and block and wanted:
            out.append(path)
    if not out:
        raise SDStudioError(f"no UNet layers match {suffixes}", field="targets")
    return out


class LoraLoss(nn.Module):
    """``forward(x0, noise, t, context, added=None)`` -> diffusion MSE; state dict = adapter weights only."""

    def __init__(self, unet: nn.Module, sched_config: dict):
        super().__init__()
        self.unet = unet
        self.prediction = sched_config["prediction_type"]
        self.register_buffer("abar", diffusion.alphas_cumprod(sched_config), persistent=False)

    def forward(self, x0, noise, t, context, added=None) -> torch.Tensor:
        x_t = diffusion.q_sample(x0, noise, t, self.abar)
        out = self.unet(x_t, t, encoder_hidden_states=context, added_cond_kwargs=added).sample
        return F.mse_loss(out.float(), diffusion.target(x0, noise, t, self.abar, self.prediction).float())

    def state_dict(self, *args, **kwargs):  # only the trainable adapter
        full = super().state_dict(*args, **kwargs)
        return {k: v for k, v in full.items() if "lora_" in k}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        mine = set(self.state_dict())
        if strict and set(state_dict) != mine:
            raise SDStudioError(
                "checkpoint's adapter does not match this LoRA (rank/targets)", field="resume"
            )
        return super().load_state_dict(state_dict, strict=False, assign=assign)


class LoraTask:
    """LoRA over a loaded :class:`StableDiffusionModel` (VAE, text encoders and base UNet frozen)."""

    name = "lora"
    ema_decay = None

    def __init__(self, model, cfg: LoraConfig, seed: int = 0):
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        self.sd, self.cfg = model, cfg
        model.eval()
        for module in [model.unet, model.vae, *model.text_encoders]:
            module.requires_grad_(False)
        torch.manual_seed(seed)
        peft_config = PeftLoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.alpha,
            target_modules=target_modules(model.unet, cfg.targets),
            init_lora_weights=True,  # A random (Kaiming), B zero: training starts from the base model
        )
        inject_adapter_in_model(peft_config, model.unet)
        self.sched_config = dict(model.scheduler_config)
        self.model = LoraLoss(model.unet, self.sched_config)
        size = cfg.size or int(model.unet.config.sample_size) * model.vae_scale_factor
        self.size = size

    def setup(self, device: torch.device) -> None:
        self.sd.to(device, torch.float32)
        self.device = device

    @torch.no_grad()
    def _context(self, captions: list[str]):
        from sdstudio.prompts.encode import encode_prompts

        cond = encode_prompts(self.sd, captions)
        added = None
        if self.sd.family.name == "sdxl":
            ids = torch.tensor([[self.size, self.size, 0, 0, self.size, self.size]] * len(captions))
            added = {"text_embeds": cond.pooled.to(self.device), "time_ids": ids.float().to(self.device)}
        return cond.context.to(self.device), added

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict:
        from sdstudio.training.ldm import drop_captions

        with torch.no_grad():
            post = self.sd.vae.encode(images.float()).latent_dist
            eps = torch.randn(post.mean.shape, generator=gen).to(images.device)
            z = post.mean + post.std * eps
            x0 = (z - self.sd.vae_shift_factor) * self.sd.vae_scaling_factor  # (B, C, h, w)
        noise, t = diffusion.draw_noise_and_t(tuple(x0.shape), len(self.model.abar), gen, images.device)
        context, added = self._context(drop_captions(captions, self.cfg.caption_dropout, gen))
        return {"x0": x0.float(), "noise": noise, "t": t, "context": context, "added": added}

    def sample_grid(self, model: LoraLoss):
        """Preview prompts drawn by the real txt2img pipeline with the adapter as it is now."""
        if not self.cfg.preview_prompts:
            return None
        images = [preview(self.sd, p, self.cfg, self.size) for p in self.cfg.preview_prompts]
        return image_grid(images, cols=len(images), labels=list(self.cfg.preview_prompts))

    def export(self, model: LoraLoss, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        path = save_kohya(self.sd, self.cfg, out / f"{self.cfg.name}.safetensors")
        (out / "lora.json").write_text(json.dumps({"file": path.name, "rank": self.cfg.rank}) + "\n")


def preview(model, prompt: str, cfg: LoraConfig, size: int):
    """One image of ``prompt`` (seed ``cfg.preview_seed``) from the sdstudio txt2img pipeline."""
    from sdstudio.config import GenerationRequest
    from sdstudio.pipelines import txt2img

    was_training = model.unet.training
    model.unet.eval()
    try:
        request = GenerationRequest(
            prompt=prompt, width=size, height=size, steps=cfg.preview_steps, cfg_scale=cfg.preview_cfg,
            seed=cfg.preview_seed, sampler_name="DPM++ 2M",
        )  # fmt: skip
        return txt2img(model, request)[0].image
    finally:
        model.unet.train(was_training)


def kohya_state_dict(unet: nn.Module, alpha: float, original_names: bool = False) -> dict[str, torch.Tensor]:
    """peft adapter weights of ``unet`` as kohya LoRA keys (``lora_unet_<path>.lora_down/lora_up/alpha``)."""
    from sdstudio.networks.keys import _original_unet_paths

    names = _original_unet_paths(unet) if original_names else {}
    out: dict[str, torch.Tensor] = {}
    for path, module in unet.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        base = path
        key = "lora_unet_" + names.get(base, base).replace(".", "_")
        down = module.lora_A["default"].weight.detach().float().cpu().contiguous()  # (r, in)
        up = module.lora_B["default"].weight.detach().float().cpu().contiguous()  # (out, r)
        out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"] = down, up
        out[f"{key}.alpha"] = torch.tensor(float(alpha))
    if not out:
        raise SDStudioError("the UNet carries no peft LoRA adapter to export", field="lora")
    return out


def save_kohya(model, cfg: LoraConfig, path: Path) -> Path:
    """Write the adapter as a kohya/A1111 LoRA file with ``ss_*`` metadata (atomic)."""
    from sdstudio.checkpoints.io import write_safetensors

    state = kohya_state_dict(model.unet, cfg.alpha, original_names=model.family.name == "sdxl")
    base = "sdxl_base_v1-0" if model.family.name == "sdxl" else ("sd_v2" if model.arch.startswith("sd2") else "sd_v1")
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(cfg.rank),
        "ss_network_alpha": str(cfg.alpha),
        "ss_output_name": cfg.name,
        "ss_base_model_version": base,
        "ss_v2": str(model.arch.startswith("sd2")),
        "ss_sd_model_name": model.name,
        "ss_resolution": f"({cfg.size or ''})",
        "ss_training_comment": "sdstudio train lora (peft)",
        **{str(k): str(v) for k, v in cfg.extra_metadata.items()},
    }
    return write_safetensors(state, path, metadata)


def train_lora(model, data: ImageTextSet, loop: LoopConfig, cfg: LoraConfig | None = None) -> LoopResult:
    """Fine-tune a LoRA on ``data``; writes ``final/<name>.safetensors`` (kohya format)."""
    return train_loop(LoraTask(model, cfg or LoraConfig(), loop.seed), data, loop)
