"""Server side of A1111 scripts (``script_name``): run a parsed script inside a studio job.

The runner hands each cell to the studio's image service (run -> save -> record), so X/Y/Z and
prompt-matrix cells are saved and in the gallery like any image; grids are saved under
``outputs/<kind>-grids/YYYY-MM-DD/``; SD-upscale tiles are generated without saving (A1111 sets
``do_not_save_samples``), only the combined image is. The job's images end in A1111's response
order: grids first, then the cells A1111 returns (X/Y/Z: only with "Include Sub Images").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from PIL import Image

from sdstudio.pipelines.scripts.grid import ScriptImage, as_generated


@dataclasses.dataclass
class _Cell:
    """What the script core reads of a generated image (pixels read back from the saved file)."""

    image: Any
    infotext: str
    seed: int
    subseed: int


def run_script_job(studio, ctx, converted, model, result):
    """Run ``converted.script`` over the studio's image service; save grids; order the job's images."""
    from sdstudio.pipelines import generate

    script = converted.script
    saved_for: dict[int, Any] = {}  # id(cell image) -> its SavedImage
    made: list[Any] = []  # SD-upscale tiles' first GeneratedImage (describes the combined image)

    def runner(request, *, init_images=None, model=None):
        if ctx.cancel.interrupted:
            return []
        m = studio.manager.acquire(model) if model else base_model
        if init_images is not None:
            request = request.replace(init_images=tuple(init_images))
        kw = {"progress": ctx.progress, "cancel": ctx.cancel}
        if script.name == "sd upscale":
            tiles = generate(m, request, limits=studio.settings.limits, **kw)
            made.extend(tiles[:1])
            return tiles
        before = len(result.images)
        studio.images.run(m, request, job_id=ctx.job.id, result=result, on_saved=lambda s: ctx.touch(), **kw)
        cells = []
        for saved in result.images[before:]:
            with Image.open(saved.path) as im:
                cell = _Cell(im.convert("RGB"), saved.infotext, saved.seed, saved.subseed)
            saved_for[id(cell.image)] = saved
            cells.append(cell)
        return cells

    base_model = model
    outcome = script.run(converted.request, runner, model=converted.model_name)
    like = made[0] if made else _described_like(converted, result)
    ordered = []
    for item in outcome.images:
        saved = saved_for.get(id(item.image))
        ordered.append(
            saved if saved is not None else _save_extra(studio, ctx, converted, result, item, like)
        )
    result.also_saved = [saved for saved in result.images if not any(saved is o for o in ordered)]
    result.images[:] = ordered
    ctx.touch()
    return result


def _described_like(converted, result) -> Any:
    """What grids are described with: the first cell's parameters and model, the job's request."""
    first = result.images[0] if result.images else None
    return SimpleNamespace(
        params=dict(first.params) if first else {}, request=converted.request, model=result.model
    )


def _save_extra(studio, ctx, converted, result, item: ScriptImage, like) -> Any:
    """Save and record a grid (or an SD-upscale result) through the image service."""
    folder = grids_dir(studio.outdir, converted.kind) if item.is_grid else None
    generated = as_generated(item, like)
    return studio.images.save(generated, job_id=ctx.job.id, model_title=result.model_title, folder=folder)


def grids_dir(outdir: str | Path, kind: str, date: dt.date | None = None) -> Path:
    """A1111 layout for grids: ``outdir/<kind>-grids/YYYY-MM-DD``."""
    return Path(outdir) / f"{kind}-grids" / (date or dt.date.today()).isoformat()
