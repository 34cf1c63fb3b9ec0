"""``train clip``: a mini-CLIP (Radford et al. 2021) - small CLIP text transformer + small conv image encoder.

The text side is a ``transformers.CLIPTextModel`` over sdstudio's shipped CLIP tokenizer (77
tokens, padded with ``<|endoftext|>`` as SD 1.x does), so its hidden states can condition a
``UNet2DConditionModel`` exactly as SD's CLIP ViT-L does. Both sides are projected to a shared
space and trained with the symmetric InfoNCE loss and a learned temperature.

Saved layout: ``text_encoder/`` (a plain CLIPTextModel folder), ``tokenizer/`` and
``miniclip.safetensors`` + ``miniclip.json`` (image encoder, projections, temperature).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from sdstudio.training.data import ImageTextSet
from sdstudio.training.loop import LoopConfig, LoopResult, image_grid, to_pil, train_loop

MAX_TOKENS = 77


@dataclass
class MiniCLIPConfig:
    """Sizes of both towers; ``hidden`` is also the cross-attention width the LDM will see."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    embed_dim: int = 128
    image_channels: tuple[int, ...] = (32, 64, 128, 192)
    image_size: int = 64
    shift: int = 4  # random translation (pixels) of training images


def text_config(cfg: MiniCLIPConfig):
    """Return the ``CLIPTextConfig`` of the text tower (CLIP vocabulary, 77 positions, quick_gelu)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=cfg.hidden,
        intermediate_size=cfg.hidden * 4,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
        projection_dim=cfg.embed_dim,
        hidden_act="quick_gelu",
    )


class ImageEncoder(nn.Module):
    """Conv net ``(B, 3, H, W) -> (B, embed_dim)``: strided conv stages, GroupNorm + SiLU, mean pool."""

    def __init__(self, channels: tuple[int, ...], embed_dim: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels[0], 3, padding=1)]
        prev = channels[0]
        for ch in channels:
            layers += [
                nn.GroupNorm(8, prev),
                nn.SiLU(),
                nn.Conv2d(prev, ch, 3, stride=2, padding=1),
                nn.GroupNorm(8, ch),
                nn.SiLU(),
                nn.Conv2d(ch, ch, 3, padding=1),
            ]
            prev = ch
        self.body = nn.Sequential(*layers)
        self.norm = nn.LayerNorm(prev)
        self.proj = nn.Linear(prev, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x).mean(dim=(2, 3))  # (B, C)
        return self.proj(self.norm(h))


class MiniCLIP(nn.Module):
    """Text tower + image tower + temperature; ``forward(pixels, input_ids)`` returns the InfoNCE loss.

    With several processes each rank contrasts its own share of the batch (no all-gather), so the
    negatives per image are ``batch_size / world_size``.
    """

    def __init__(self, cfg: MiniCLIPConfig, text_model=None):
        super().__init__()
        from transformers import CLIPTextModel

        self.cfg = cfg
        self.text_model = text_model if text_model is not None else CLIPTextModel(text_config(cfg))
        self.text_projection = nn.Linear(cfg.hidden, cfg.embed_dim, bias=False)
        self.image_encoder = ImageEncoder(tuple(cfg.image_channels), cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Return unit-norm text embeddings ``(B, E)`` pooled at the end-of-text token."""
        pooled = self.text_model(input_ids=input_ids).pooler_output
        return F.normalize(self.text_projection(pooled).float(), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return unit-norm image embeddings ``(B, E)`` for pixels in [-1, 1]."""
        return F.normalize(self.image_encoder(pixels).float(), dim=-1)

    def forward(self, pixels: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        img, txt = self.encode_image(pixels), self.encode_text(input_ids)
        logits = self.logit_scale.clamp(max=math.log(100)).exp() * img @ txt.T  # (B, B)
        labels = torch.arange(len(img), device=img.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def tokenize(captions: list[str], device=None) -> torch.Tensor:
    """Return ``(B, 77)`` token ids from the shipped CLIP tokenizer (padded with end-of-text)."""
    from sdstudio.families.sd.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    ids = tok(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
    return ids.input_ids.to(device) if device is not None else ids.input_ids


class TokenCache:
    """Memoised :func:`tokenize` per caption string (the slow BPE would dominate a GPU step)."""

    def __init__(self):
        self.ids: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str], device=None) -> torch.Tensor:
        """Return ``(B, 77)`` token ids for ``captions``."""
        new = [c for c in dict.fromkeys(captions) if c not in self.ids]
        if new:
            self.ids.update(zip(new, tokenize(new)))
        ids = torch.stack([self.ids[c] for c in captions])
        return ids.to(device) if device is not None else ids


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Return ``x`` translated by a random offset (one per batch) with white (1.0) filling the border."""
    if max_shift <= 0:
        return x
    dx, dy = (torch.randint(-max_shift, max_shift + 1, (2,), generator=gen)).tolist()
    padded = F.pad(x, (max_shift,) * 4, value=1.0)
    h, w = x.shape[-2:]
    return padded[..., max_shift + dy : max_shift + dy + h, max_shift + dx : max_shift + dx + w]


class CLIPTask:
    """The loop's view of mini-CLIP training; the preview is a caption-retrieval grid."""

    name = "clip"
    ema_decay = None

    def __init__(self, cfg: MiniCLIPConfig, data: ImageTextSet, seed: int = 0):
        torch.manual_seed(seed)
        self.cfg, self.data = cfg, data
        self.model = MiniCLIP(cfg)
        self.tokens = TokenCache()

    def setup(self, device: torch.device) -> None:
        self.device = device

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict:
        return {
            "pixels": random_shift(images, self.cfg.shift, gen),
            "input_ids": self.tokens(captions, images.device),
        }

    def sample_grid(self, model: MiniCLIP):
        """Return a grid of 8 images, each labelled with the best of 64 canonical captions."""
        n = min(64, len(self.data))
        idx = torch.linspace(0, len(self.data) - 1, n).long()
        x = self.data.images[idx].float().div(127.5).sub(1).to(self.device)
        caps = [self.data.captions[i][0] for i in idx.tolist()]
        sims = model.encode_image(x) @ model.encode_text(tokenize(caps, self.device)).T
        show = list(range(0, n, max(1, n // 8)))[:8]
        labels = [caps[sims[i].argmax().item()] for i in show]
        return image_grid(to_pil(x[show]), cols=len(show), labels=labels)

    def export(self, model: MiniCLIP, out: Path) -> None:
        save_miniclip(model, out)


def save_miniclip(model: MiniCLIP, out: Path) -> None:
    """Write ``text_encoder/``, ``tokenizer/``, ``miniclip.safetensors`` and ``miniclip.json`` into ``out``."""
    import shutil

    from safetensors.torch import save_file

    from sdstudio.families.sd.tokenizer import TOKENIZER_DIR

    out.mkdir(parents=True, exist_ok=True)
    model.text_model.save_pretrained(out / "text_encoder", safe_serialization=True)
    shutil.copytree(TOKENIZER_DIR, out / "tokenizer", dirs_exist_ok=True)
    rest = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith("text_model.")}
    save_file(rest, out / "miniclip.safetensors")
    (out / "miniclip.json").write_text(json.dumps(asdict(model.cfg), indent=2) + "\n")


def load_miniclip(folder: str | Path, text_encoder: str | Path | None = None) -> MiniCLIP:
    """Load a mini-CLIP saved by :func:`save_miniclip` (``text_encoder`` may point elsewhere) in fp32."""
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    folder = Path(folder)
    raw = json.loads((folder / "miniclip.json").read_text())
    cfg = MiniCLIPConfig(**{**raw, "image_channels": tuple(raw["image_channels"])})
    text = CLIPTextModel.from_pretrained(
        str(text_encoder or folder / "text_encoder"), dtype=torch.float32, local_files_only=True
    )
    model = MiniCLIP(cfg, text_model=text)
    state = {k: v.float() for k, v in load_file(folder / "miniclip.safetensors").items()}
    missing = model.load_state_dict(state, strict=False)
    bad = [k for k in missing.missing_keys if not k.startswith("text_model.")]
    if bad or missing.unexpected_keys:
        raise ValueError(
            f"miniclip weights do not match: missing {bad}, unexpected {missing.unexpected_keys}"
        )
    return model.eval()


def train_clip(data: ImageTextSet, loop: LoopConfig, cfg: MiniCLIPConfig | None = None) -> LoopResult:
    """Train a mini-CLIP on ``data``; the result lands in ``loop.out_dir/final``."""
    return train_loop(CLIPTask(cfg or MiniCLIPConfig(), data, loop.seed), data, loop)
