"""Image grids with A1111-style labels (``modules/images.py``: image_grid, draw_grid_annotations,
draw_prompt_matrix, split_grid, combine_grid) and the result types shared by the scripts.

Labels are drawn as A1111 does: font size ``(cell_w + cell_h) // 25``, column texts centred above
each column, row texts centred in a left band ``cell_w * 3 // 4`` wide, long texts wrapped by
words and shrunk until they fit; inactive prompt-matrix parts are grey and struck through.
The font is DejaVu Sans (shipped with matplotlib), A1111's default.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sdstudio.infotext import quote

Runner = Callable[..., list]  # run(request, *, init_images=None, model=None) -> list[GeneratedImage]
BACKGROUND = "#ffffff"
TEXT_ACTIVE = (0, 0, 0)
TEXT_INACTIVE = (153, 153, 153)


@dataclass
class ScriptImage:
    """One image a script returns: a labelled grid or a cell (a generated image)."""

    image: Any  # PIL.Image
    infotext: str
    seed: int
    subseed: int = -1
    is_grid: bool = False
    prompt: str = ""
    request: Any = None  # the cell's GenerationRequest (None for grids)


@dataclass
class ScriptResult:
    """A script's output: ``images`` in A1111's response order, plus every cell (returned or not)."""

    images: list[ScriptImage]
    cells: list[ScriptImage] = field(default_factory=list)
    runner_calls: int = 0  # how many times the runner was called (batching shows here)

    @property
    def grids(self) -> list[ScriptImage]:
        return [im for im in self.images if im.is_grid]


@dataclass
class Annotation:
    """A1111 ``GridAnnotation``: one line of label text, active or struck through."""

    text: str = ""
    is_active: bool = True


@lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at ``size`` px (matplotlib's copy), Pillow's built-in font if that is missing."""
    import os

    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    try:
        return ImageFont.truetype(path, max(1, size))
    except OSError:
        return ImageFont.load_default(max(1, size))


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """Paste equally sized images row-major into ``rows`` rows (A1111 ``images.image_grid``)."""
    rows = max(1, min(rows, len(images)))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), BACKGROUND)
    for i, im in enumerate(images):
        grid.paste(im.convert("RGB"), (i % cols * w, i // cols * h))
    return grid


def _wrap(draw: ImageDraw.ImageDraw, text: str, fnt, width: float) -> list[str]:
    lines = [""]
    for word in text.split():
        line = f"{lines[-1]} {word}".strip()
        if draw.textlength(line, font=fnt) <= width or not lines[-1]:
            lines[-1] = line
        else:
            lines.append(word)
    return lines


def _layout(draw, texts: list[Annotation], fnt, width: float) -> list[tuple[Annotation, tuple[int, int]]]:
    """Wrap each annotation to ``width`` and measure every line: [(line, (w, h)), ...]."""
    out = []
    for ann in texts:
        for line in _wrap(draw, ann.text, fnt, width):
            box = draw.multiline_textbbox((0, 0), line, font=fnt)
            out.append((Annotation(line, ann.is_active), (box[2] - box[0], box[3] - box[1])))
    return out


def _block_height(lines, spacing: int) -> int:
    return sum(size[1] + spacing for _, size in lines) - spacing if lines else 0


def _draw_block(draw, cx: float, y: float, lines, fontsize: int, spacing: int, max_width: float) -> None:
    """Draw measured lines centred at ``cx`` from ``y`` down, shrinking any that do not fit."""
    for ann, size in lines:
        fnt, fs = font(fontsize), fontsize
        while draw.textlength(ann.text, font=fnt) > max_width and fs > 1:
            fs -= 1
            fnt = font(fs)
        colour = TEXT_ACTIVE if ann.is_active else TEXT_INACTIVE
        draw.text((cx, y + size[1] / 2), ann.text, font=fnt, fill=colour, anchor="mm")
        if not ann.is_active:
            half = size[0] // 2
            draw.line((cx - half, y + size[1] // 2, cx + half, y + size[1] // 2), fill=colour, width=4)
        y += size[1] + spacing


def draw_grid_annotations(
    grid: Image.Image,
    cell_w: int,
    cell_h: int,
    hor_texts: list[list[Annotation]],
    ver_texts: list[list[Annotation]],
    margin: int = 0,
) -> Image.Image:
    """Add column labels above and row labels left of a grid (A1111 ``draw_grid_annotations``).

    ``margin`` px of background go between cells. No text on an axis means no band for it.
    """
    cols, rows = grid.width // cell_w, grid.height // cell_h
    if cols != len(hor_texts) or rows != len(ver_texts):
        raise ValueError(f"grid is {cols}x{rows} cells but got {len(hor_texts)}x{len(ver_texts)} labels")
    fontsize = max(6, (cell_w + cell_h) // 25)
    spacing = fontsize // 2
    fnt = font(fontsize)
    has_ver = any(a.text for lines in ver_texts for a in lines)
    pad_left = cell_w * 3 // 4 if has_ver else 0
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    hor = [_layout(probe, t, fnt, cell_w) for t in hor_texts]
    ver = [_layout(probe, t, fnt, pad_left) for t in ver_texts]
    hor_heights = [_block_height(lines, spacing) for lines in hor]
    pad_top = 0 if not any(a.text for t in hor_texts for a in t) else max(hor_heights) + spacing * 2
    out = Image.new(
        "RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
        BACKGROUND,
    )  # fmt: skip
    for r in range(rows):
        for c in range(cols):
            cell = grid.crop((cell_w * c, cell_h * r, cell_w * (c + 1), cell_h * r + cell_h))
            out.paste(cell, (pad_left + (cell_w + margin) * c, pad_top + (cell_h + margin) * r))
    draw = ImageDraw.Draw(out)
    for c, lines in enumerate(hor):
        x = pad_left + (cell_w + margin) * c + cell_w / 2
        _draw_block(draw, x, pad_top / 2 - hor_heights[c] / 2, lines, fontsize, spacing, cell_w)
    for r, lines in enumerate(ver):
        y = pad_top + (cell_h + margin) * r + cell_h / 2 - _block_height(lines, spacing) / 2
        _draw_block(draw, pad_left / 2, y, lines, fontsize, spacing, pad_left)
    return out


def label_texts(labels: Sequence[str]) -> list[list[Annotation]]:
    return [[Annotation(str(text))] for text in labels]


def labelled_grid(
    images: Sequence[Image.Image],
    col_labels: Sequence[str],
    row_labels: Sequence[str],
    *,
    legend: bool = True,
    margin: int = 0,
) -> Image.Image:
    """A ``len(row_labels)`` x ``len(col_labels)`` grid of ``images`` (row-major) with labels."""
    grid = image_grid(images, rows=len(row_labels))
    if not legend:
        return grid
    w, h = images[0].size
    return draw_grid_annotations(grid, w, h, label_texts(col_labels), label_texts(row_labels), margin)


def draw_prompt_matrix(
    grid: Image.Image, cell_w: int, cell_h: int, parts: Sequence[str], margin: int = 0
) -> Image.Image:
    """Label a prompt-matrix grid: the first half of ``parts[1:]`` across, the rest down (A1111)."""
    prompts = list(parts[1:])
    boundary = math.ceil(len(prompts) / 2)
    horiz, vert = prompts[:boundary], prompts[boundary:]
    hor = [
        [Annotation(x, pos & (1 << i) != 0) for i, x in enumerate(horiz)] for pos in range(1 << len(horiz))
    ]
    ver = [[Annotation(x, pos & (1 << i) != 0) for i, x in enumerate(vert)] for pos in range(1 << len(vert))]
    return draw_grid_annotations(grid, cell_w, cell_h, hor, ver, margin)


@dataclass
class Tiles:
    """A1111 ``images.Grid``: rows of ``(y, h, [[x, w, tile], ...])`` covering an image."""

    rows: list[tuple[int, int, list[list[Any]]]]
    tile_w: int
    tile_h: int
    image_w: int
    image_h: int
    overlap: int


def split_grid(image: Image.Image, tile_w: int, tile_h: int, overlap: int) -> Tiles:
    """Cut ``image`` into overlapping tiles, the last row/column flush with the edge (A1111)."""
    w, h = image.size
    cols = max(1, math.ceil((w - overlap) / max(1, tile_w - overlap)))
    rows = max(1, math.ceil((h - overlap) / max(1, tile_h - overlap)))
    dx = (w - tile_w) / (cols - 1) if cols > 1 else 0
    dy = (h - tile_h) / (rows - 1) if rows > 1 else 0
    out = Tiles([], tile_w, tile_h, w, h, overlap)
    for r in range(rows):
        y = min(int(r * dy), h - tile_h) if h >= tile_h else 0
        row = []
        for c in range(cols):
            x = min(int(c * dx), w - tile_w) if w >= tile_w else 0
            row.append([x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))])
        out.rows.append((y, tile_h, row))
    return out


def combine_grid(tiles: Tiles) -> Image.Image:
    """Paste tiles back, blending each overlap with a linear ramp (A1111 ``combine_grid``)."""
    ov = tiles.overlap

    def ramp(shape: tuple[int, int], axis: int) -> Image.Image:
        r = (np.arange(ov, dtype=np.float32) * 255 / max(ov, 1)).astype(np.uint8)
        arr = np.broadcast_to(r[None, :] if axis == 1 else r[:, None], shape)
        return Image.fromarray(np.ascontiguousarray(arr), "L")

    out = Image.new("RGB", (tiles.image_w, tiles.image_h))
    for y, h, row in tiles.rows:
        line = Image.new("RGB", (tiles.image_w, h))
        for x, w, tile in row:
            if x == 0 or ov == 0:
                line.paste(tile, (x, 0))
                continue
            line.paste(tile.crop((0, 0, ov, h)), (x, 0), mask=ramp((h, ov), 1))
            line.paste(tile.crop((ov, 0, w, h)), (x + ov, 0))
        if y == 0 or ov == 0:
            out.paste(line, (0, y))
            continue
        out.paste(line.crop((0, 0, line.width, ov)), (0, y), mask=ramp((ov, tiles.image_w), 0))
        out.paste(line.crop((0, ov, line.width, h)), (0, y + ov))
    return out


def as_generated(item: ScriptImage, like: Any) -> Any:
    """A grid (or SD-upscale result) as a :class:`~sdstudio.pipelines.GeneratedImage`, described like
    the generated image ``like`` (its request, model identity and params, plus the grid's infotext
    keys), so the image service can save and record it as any other image."""
    from sdstudio.infotext import parse_infotext
    from sdstudio.pipelines.plan import GeneratedImage

    params = dict(like.params)
    parsed = parse_infotext(item.infotext) if item.infotext else {}
    params.update(
        {k: v for k, v in parsed.items() if k not in ("Prompt", "Negative prompt") and k not in params}
    )
    return GeneratedImage(
        item.image, item.seed, item.subseed, item.infotext, 0, like.request, params, like.model
    )


def with_params(infotext: str, params: dict[str, Any]) -> str:
    """``infotext`` with extra ``key: value`` pairs added before ``Version`` (A1111 extra params)."""
    extra = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v not in (None, ""))
    if not extra:
        return infotext
    head, sep, last = infotext.rpartition("\n")
    before, vsep, version = last.partition(", Version: ")
    last = f"{before}, {extra}{vsep}{version}" if vsep else f"{last}, {extra}"
    return f"{head}{sep}{last}"
