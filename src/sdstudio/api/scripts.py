"""Server side of A1111 scripts (``script_name``): run a parsed script in a studio job.

The job's runner generates through the studio's own pipeline path (same model manager, limits,
cancel token and progress); X/Y/Z and prompt-matrix cells are saved and recorded like any image,
grids go to ``outputs/<kind>-grids/YYYY-MM-DD/``, SD-upscale tiles are not saved (A1111 sets
``do_not_save_samples``), only the combined image. The job's images end in A1111's response order:
grids first, then the cells A1111 would return (X/Y/Z: only with "Include Sub Images").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

from sdstudio.pipelines.scripts.grid import ScriptImage


def run_script_job(studio, model: Any, converted, request, ctx, on_image) -> list:
    """Run ``converted.script`` with a runner over ``studio._run_pipeline``; save grids; order images."""
    from sdstudio.api.service import SavedImage

    script = converted.script
    save_cells = script.name != "sd upscale"
    cells: dict[int, SavedImage] = {}  # id(GeneratedImage) -> its saved record

    def cell_saved(gi: Any) -> None:
        on_image(gi)
        cells[id(gi.image)] = ctx.job.result.images[-1]

    def runner(req, *, init_images=None, model=None):
        if ctx.cancel.interrupted:
            return []
        m = studio.manager.acquire(model) if model else studio_model
        job = dataclasses.replace(converted, script=None, init_images=init_images or converted.init_images)
        return studio._run_pipeline(m, job, req, ctx, cell_saved if save_cells else None)

    studio_model = model
    outcome = script.run(
        request, runner, init_images=converted.init_images or None, model=converted.model_name
    )
    result = ctx.job.result
    ordered: list[SavedImage] = []
    for item in outcome.images:
        saved = cells.get(id(item.image))
        ordered.append(saved if saved is not None else _save_extra(studio, item, ctx, converted, result))
    result.images[:] = ordered
    return ordered


def _save_extra(studio, item: ScriptImage, ctx, converted, result) -> Any:
    """Save a grid (or an SD-upscale result) and return its record."""
    from sdstudio.api.service import SavedImage

    saved = SavedImage(
        index=0, seed=item.seed, subseed=item.subseed, infotext=item.infotext, image=item.image
    )
    folder = grids_dir(studio.outdir, converted.kind) if item.is_grid else None
    studio._save(saved, ctx.job.id, converted, result, folder=folder)
    saved.image = None
    return saved


def grids_dir(outdir: str | Path, kind: str, date: dt.date | None = None) -> Path:
    """A1111 layout for grids: ``outdir/<kind>-grids/YYYY-MM-DD``."""
    return Path(outdir) / f"{kind}-grids" / (date or dt.date.today()).isoformat()
