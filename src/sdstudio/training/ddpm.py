"""``train ddpm``: pixel-space DDPM (Ho et al. 2020) on an image folder, optionally class- or text-conditional.

Unconditional and class-conditional models are a diffusers ``UNet2DModel`` (classes through its
``num_class_embeds``; the extra last class is the "null" label used for condition dropout); text
conditioning uses a ``UNet2DConditionModel`` cross-attending to a CLIP text encoder - a frozen one
from a folder (e.g. the mini-CLIP's ``text_encoder/``) or a small one trained jointly. Condition
dropout trains the unconditional branch that classifier-free guidance (Ho & Salimans 2022) needs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sdstudio.errors import SDStudioError
from sdstudio.training import diffusion
from sdstudio.training.data import ImageTextSet
from sdstudio.training.ldm import DiffusionLoss, drop_captions
from sdstudio.training.loop import LoopConfig, LoopResult, image_grid, to_pil, train_loop
from sdstudio.training.miniclip import MiniCLIPConfig, TokenCache, text_config

CONDITIONS = ("none", "class", "text")


@dataclass
class DDPMConfig:
    """Pixel UNet, schedule and conditioning of a DDPM run."""

    image_size: int = 32
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    schedule: str = "linear"
    prediction: str = "eps"
    condition: str = "none"  # none | class | text
    condition_dropout: float = 0.1
    text_encoder: str | None = None  # folder of a frozen CLIPTextModel; None = train a small one
    text_hidden: int = 64
    ema_decay: float = 0.999
    guidance: float = 3.0
    preview_steps: int = 50
    preview_labels: tuple[str, ...] = field(default_factory=tuple)  # captions/classes for the grid

    def validate(self) -> None:
        """Raise :class:`SDStudioError` for unknown options."""
        if self.condition not in CONDITIONS:
            raise SDStudioError(
                f"condition must be one of {CONDITIONS}, not {self.condition!r}", field="condition"
            )
        diffusion.scheduler_config(self.schedule, self.prediction)


def class_vocabulary(data: ImageTextSet) -> dict[str, int]:
    """Return caption -> class id, one class per distinct canonical caption (alternatives map to it)."""
    classes: dict[str, int] = {}
    for caps in data.captions:
        classes.setdefault(caps[0], len(classes))
    vocab = {}
    for caps in data.captions:
        for c in caps:
            vocab.setdefault(c, classes[caps[0]])
    return vocab


def build_pixel_unet(cfg: DDPMConfig, num_classes: int = 0, context_dim: int = 0, seed: int = 0):
    """Return the pixel UNet: ``UNet2DModel`` (none/class) or ``UNet2DConditionModel`` (text)."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    torch.manual_seed(seed)
    n = len(cfg.block_out_channels)
    common = {
        "sample_size": cfg.image_size,
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": tuple(cfg.block_out_channels),
        "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups,
    }
    if cfg.condition == "text":
        down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1)
        up = tuple(b.replace("Down", "Up") for b in reversed(down))
        return UNet2DConditionModel(
            **common,
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=context_dim,
            attention_head_dim=4,
        )
    down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",)
    up = ("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1)
    return UNet2DModel(
        **common,
        down_block_types=down,
        up_block_types=up,
        num_class_embeds=(num_classes + 1) if num_classes else None,
    )


class TextDiffusionLoss(nn.Module):
    """Diffusion loss whose text encoder is part of the trained module (jointly trained text tower)."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, sched_config: dict):
        super().__init__()
        self.inner = DiffusionLoss(unet, sched_config)
        self.text_encoder = text_encoder

    @property
    def unet(self):
        return self.inner.unet

    def forward(self, x0, noise, t, input_ids) -> torch.Tensor:
        context = self.text_encoder(input_ids=input_ids).last_hidden_state  # (B, 77, D)
        return self.inner(x0, noise, t, context=context)


class DDPMTask:
    """The loop's view of pixel DDPM training."""

    name = "ddpm"

    def __init__(self, cfg: DDPMConfig, data: ImageTextSet, seed: int = 0):
        cfg.validate()
        self.cfg, self.ema_decay = cfg, cfg.ema_decay
        self.sched_config = diffusion.scheduler_config(cfg.schedule, cfg.prediction)
        self.tokens = TokenCache()
        self.frozen_text = None
        self.vocab = class_vocabulary(data) if cfg.condition == "class" else {}
        self.null_class = max(self.vocab.values(), default=-1) + 1
        labels = cfg.preview_labels or tuple(dict.fromkeys(c[0] for c in data.captions))[:8]
        self.preview = list(labels) if cfg.condition != "none" else [""] * 8
        if cfg.condition == "text":
            self.model = self._text_model(seed)
        else:
            unet = build_pixel_unet(
                cfg, num_classes=self.null_class if cfg.condition == "class" else 0, seed=seed
            )
            self.model = DiffusionLoss(unet, self.sched_config)

    def _text_model(self, seed: int) -> nn.Module:
        from transformers import CLIPTextModel

        if self.cfg.text_encoder:
            self.frozen_text = CLIPTextModel.from_pretrained(
                self.cfg.text_encoder, dtype=torch.float32, local_files_only=True
            ).eval()
            self.frozen_text.requires_grad_(False)
            unet = build_pixel_unet(self.cfg, context_dim=self.frozen_text.config.hidden_size, seed=seed)
            return DiffusionLoss(unet, self.sched_config)
        torch.manual_seed(seed)
        tc = text_config(
            MiniCLIPConfig(hidden=self.cfg.text_hidden, layers=2, heads=4, embed_dim=self.cfg.text_hidden)
        )
        text = CLIPTextModel(tc)
        unet = build_pixel_unet(self.cfg, context_dim=self.cfg.text_hidden, seed=seed)
        return TextDiffusionLoss(unet, text, self.sched_config)

    def setup(self, device: torch.device) -> None:
        self.device = device
        if self.frozen_text is not None:
            self.frozen_text.to(device)

    def _condition(self, captions: list[str], gen: torch.Generator | None) -> dict:
        """Return the model inputs for ``captions`` ("" = unconditional), dropping some when ``gen`` is given."""
        if gen is not None and self.cfg.condition != "none":
            captions = drop_captions(captions, self.cfg.condition_dropout, gen)
        if self.cfg.condition == "class":
            ids = [self.vocab.get(c, self.null_class) if c else self.null_class for c in captions]
            return {"class_labels": torch.tensor(ids, device=self.device)}
        if self.cfg.condition == "text":
            ids = self.tokens(captions, self.device)
            if self.frozen_text is None:
                return {"input_ids": ids}
            with torch.no_grad():
                return {"context": self.frozen_text(input_ids=ids).last_hidden_state}
        return {}

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict:
        noise, t = diffusion.draw_noise_and_t(tuple(images.shape), 1000, gen, images.device)
        return {"x0": images, "noise": noise, "t": t, **self._condition(captions, gen)}

    def denoiser(self, model: nn.Module, captions: list[str], guidance: float):
        """Return ``denoise(x_t, t)`` for DDIM: the model output with classifier-free guidance."""
        unet = model.unet
        cond, uncond = self._condition(captions, None), self._condition([""] * len(captions), None)
        if isinstance(model, TextDiffusionLoss):
            cond = {"context": model.text_encoder(input_ids=cond["input_ids"]).last_hidden_state}
            uncond = {"context": model.text_encoder(input_ids=uncond["input_ids"]).last_hidden_state}

        def call(x, t, c):
            if "context" in c:
                return unet(x, t, encoder_hidden_states=c["context"]).sample
            return unet(x, t, class_labels=c.get("class_labels")).sample

        def denoise(x, t):
            if self.cfg.condition == "none" or guidance == 1.0:
                return call(x, t, cond)
            u, c = call(x, t, uncond), call(x, t, cond)
            return u + guidance * (c - u)

        return denoise

    def sample(self, model: nn.Module, captions: list[str], seed: int = 0, steps: int | None = None):
        """Return images ``(B, 3, H, W)`` in [-1, 1] for ``captions`` (ignored when unconditional)."""
        s = self.cfg.image_size
        denoise = self.denoiser(model, captions, self.cfg.guidance)
        steps = steps or self.cfg.preview_steps
        return diffusion.ddim_sample(
            denoise, (len(captions), 3, s, s), self.sched_config, steps, seed, self.device
        )

    def sample_grid(self, model: nn.Module):
        x = self.sample(model, self.preview)
        return image_grid(
            to_pil(x), cols=len(self.preview), labels=self.preview if self.cfg.condition != "none" else None
        )

    def export(self, model: nn.Module, out: Path) -> None:
        from sdstudio.training.export import save_scheduler

        out.mkdir(parents=True, exist_ok=True)
        model.unet.save_pretrained(out / "unet", safe_serialization=True)
        save_scheduler({**self.sched_config, "_class_name": "DDPMScheduler"}, out / "scheduler")
        if isinstance(model, TextDiffusionLoss):
            model.text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
        if self.vocab:
            (out / "classes.json").write_text(json.dumps(self.vocab, indent=1, ensure_ascii=False) + "\n")
        index = {
            "_class_name": "DDPMPipeline",
            "unet": ["diffusers", type(model.unet).__name__],
            "scheduler": ["diffusers", "DDPMScheduler"],
        }
        (out / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def train_ddpm(data: ImageTextSet, loop: LoopConfig, cfg: DDPMConfig | None = None) -> LoopResult:
    """Train a pixel DDPM on ``data`` (images resized to ``cfg.image_size``); result in ``out_dir/final``."""
    return train_loop(DDPMTask(cfg or DDPMConfig(), data, loop.seed), data, loop)
