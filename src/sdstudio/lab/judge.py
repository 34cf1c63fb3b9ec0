"""Image/text embedders for studies: the embedded model's mini-CLIP, or any local CLIP folder.

``--clip FOLDER`` accepts a mini-CLIP folder (``miniclip.json`` + ``miniclip.safetensors`` +
``text_encoder/``) or a transformers ``CLIPModel`` folder (``config.json`` with its tokenizer and
the standard CLIP image preprocessing: bicubic resize to the model's size, CLIP mean/std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdstudio.errors import SDStudioError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Judge:
    """Unit-norm embeddings of images and texts in one space."""

    name: str
    model: Any
    kind: str  # "miniclip" | "clip"
    size: int
    tokenizer: Any = None

    @torch.no_grad()
    def images(self, images: list) -> np.ndarray:
        """(N, E) unit-norm image embeddings."""
        from PIL import Image

        arr = np.stack([
            np.asarray(im.convert("RGB").resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
            for im in images
        ])  # fmt: skip
        x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 255.0  # (N, 3, S, S) in [0, 1]
        if self.kind == "miniclip":
            return self.model.encode_image(x * 2 - 1).numpy()
        mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        emb = self.model.get_image_features(pixel_values=(x - mean) / std)
        return torch.nn.functional.normalize(_features(emb), dim=-1).numpy()

    @torch.no_grad()
    def texts(self, texts: list[str]) -> np.ndarray:
        """(N, E) unit-norm text embeddings."""
        if self.kind == "miniclip":
            from sdstudio.training.miniclip import tokenize

            return self.model.encode_text(tokenize(texts)).numpy()
        ids = self.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        emb = self.model.get_text_features(input_ids=ids.input_ids, attention_mask=ids.attention_mask)
        return torch.nn.functional.normalize(_features(emb), dim=-1).numpy()


def _features(out: Any) -> torch.Tensor:
    """transformers returns a tensor (or, in newer versions, an output object holding the embeddings)."""
    if isinstance(out, torch.Tensor):
        return out.float()
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(out, key, None)
        if value is not None:
            return value.float()
    raise SDStudioError("could not read CLIP features from this transformers version")


def load_judge(folder: str | Path | None = None) -> Judge:
    """The mini-CLIP shipped with the embedded model (default) or the CLIP in ``folder``."""
    from sdstudio.models.loader import DEFAULT_MODEL_DIR

    if folder is None:
        from sdstudio.training.miniclip import load_miniclip

        clip = load_miniclip(DEFAULT_MODEL_DIR / "miniclip", text_encoder=DEFAULT_MODEL_DIR / "text_encoder")
        return Judge("embedded mini-CLIP", clip, "miniclip", clip.cfg.image_size)
    path = Path(folder)
    if (path / "miniclip.json").is_file():
        from sdstudio.training.miniclip import load_miniclip

        clip = load_miniclip(path)
        return Judge(f"mini-CLIP {path.name}", clip, "miniclip", clip.cfg.image_size)
    if (path / "config.json").is_file():
        from transformers import CLIPModel, CLIPTokenizer

        model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
        tok = CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        return Judge(f"CLIP {path.name}", model, "clip", int(model.config.vision_config.image_size), tok)
    raise SDStudioError(
        f"--clip {folder}: not a mini-CLIP folder (miniclip.json) or a transformers CLIP folder (config.json)",
        field="clip",
    )
