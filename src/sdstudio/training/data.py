"""Image-caption data for the trainers: an image folder read into memory, a synthetic set, batch order.

Folder layout (either form): ``captions.jsonl`` with one ``{"file", "caption", "captions"?, "split"?}``
per line (file relative to the folder), or images with a ``.txt`` caption file beside each
(the kohya/A1111 training convention). All images are resized to ``size`` x ``size`` RGB and
kept as one uint8 tensor, which is what small 64 px sets need (3,786 emoji = 46 MB).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sdstudio.errors import SDStudioError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class ImageTextSet:
    """In-memory images ``(N, 3, H, W)`` uint8 with caption alternatives (first = canonical)."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    captions: list[list[str]]
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: list[int]) -> ImageTextSet:
        """Return the rows at ``index`` as a new set."""
        files = [self.files[i] for i in index] if self.files else []
        return ImageTextSet(self.images[index], [self.captions[i] for i in index], files)

    def batch(self, index: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, list[str]]:
        """Return images in [-1, 1] ``(B, 3, H, W)`` float32 and one caption per row, drawn with ``gen``."""
        x = self.images[index].float() / 127.5 - 1.0
        picks = torch.randint(0, 1 << 30, (len(index),), generator=gen).tolist()
        caps = [self.captions[i][p % len(self.captions[i])] for i, p in zip(index.tolist(), picks)]
        return x, caps


def _load_rgb(path: Path, size: int) -> torch.Tensor:
    """Return the image at ``path`` as ``(3, size, size)`` uint8, transparent areas on white."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im).convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BICUBIC)
        return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)


def _rows(folder: Path) -> list[dict]:
    """Return ``{"file", "captions", "split"}`` rows from captions.jsonl or per-image .txt files."""
    jsonl = folder / "captions.jsonl"
    if jsonl.is_file():
        rows = []
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                caps = [row["caption"]] + [c for c in row.get("captions", []) if c != row["caption"]]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SDStudioError(
                    f"{jsonl}:{n}: expected {{'file', 'caption'}} ({exc})", field="data"
                ) from exc
            rows.append({"file": row["file"], "captions": caps, "split": row.get("split", "train")})
        return rows
    rows = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        txt = path.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        rows.append({"file": str(path.relative_to(folder)), "captions": [caption], "split": "train"})
    return rows


def load_image_folder(folder: str | Path, size: int = 64, split: str | None = "train") -> ImageTextSet:
    """Load an image folder (captions.jsonl or .txt per image) into memory; ``split=None`` keeps all rows."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SDStudioError(f"data folder not found: {folder}", field="data")
    rows = [r for r in _rows(folder) if split is None or r["split"] == split]
    if not rows:
        raise SDStudioError(f"no images (split {split!r}) in {folder}", field="data")
    images = []
    for r in rows:
        path = folder / r["file"]
        if not path.is_file():
            raise SDStudioError(f"image listed in captions but missing: {path}", field="data")
        images.append(_load_rgb(path, size))
    return ImageTextSet(torch.stack(images), [r["captions"] for r in rows], [r["file"] for r in rows])


COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 60, 220),
    "yellow": (240, 200, 20),
}
SHAPES = ("square", "circle", "triangle", "cross")


def _shape_mask(shape: str, size: int, cx: float, cy: float, r: float) -> torch.Tensor:
    """Return a ``(size, size)`` bool mask of one shape centred at (cx, cy) with radius r."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    dx, dy = xx - cx, yy - cy
    if shape == "square":
        return (dx.abs() <= r) & (dy.abs() <= r)
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "triangle":
        return (dy <= r) & (dy >= -r) & (dx.abs() <= (dy + r) / 2)
    return ((dx.abs() <= r / 3) & (dy.abs() <= r)) | ((dy.abs() <= r / 3) & (dx.abs() <= r))


def synthetic_shapes(n: int = 64, size: int = 16, seed: int = 0) -> ImageTextSet:
    """Return ``n`` coloured shapes on white with captions like "red circle" (made in memory, for tests)."""
    gen = torch.Generator().manual_seed(seed)
    images, captions = [], []
    names = list(COLOURS)
    for i in range(n):
        colour, shape = names[i % len(names)], SHAPES[(i // len(names)) % len(SHAPES)]
        r = size * (0.22 + 0.1 * torch.rand((), generator=gen).item())
        c = size / 2 + (torch.rand(2, generator=gen) - 0.5) * size * 0.2
        mask = _shape_mask(shape, size, c[0].item(), c[1].item(), r)
        img = torch.full((3, size, size), 255, dtype=torch.uint8)
        for ch, v in enumerate(COLOURS[colour]):
            img[ch][mask] = v
        images.append(img)
        captions.append([f"{colour} {shape}", f"a {colour} {shape}"])
    return ImageTextSet(torch.stack(images), captions)


@dataclass(frozen=True)
class BatchOrder:
    """Deterministic data order: step -> indices, a fresh permutation per epoch (seeded by seed, epoch).

    Being a pure function of the step, it makes ``--resume`` continue with exactly the batches an
    uninterrupted run would have seen. With several processes each takes rows ``rank::world``.
    """

    n: int
    batch_size: int
    seed: int = 0

    @property
    def per_epoch(self) -> int:
        return max(1, math.floor(self.n / self.batch_size))

    def indices(self, step: int, rank: int = 0, world: int = 1) -> torch.Tensor:
        """Return the dataset indices of global batch ``step`` for process ``rank`` (drop-last epochs)."""
        epoch, pos = divmod(step, self.per_epoch)
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(self.n, generator=gen)
        if self.batch_size > self.n:  # tiny sets: repeat the permutation
            perm = perm.repeat(math.ceil(self.batch_size / self.n))
        rows = perm[pos * self.batch_size : (pos + 1) * self.batch_size]
        return rows[rank::world]
