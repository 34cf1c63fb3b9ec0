"""run -> save -> record: the one path that makes images, for the server, the CLI and the lab.

:class:`ImageService` runs a prepared request through :func:`sdstudio.pipelines.generate`, writes
each image atomically as it finishes (A1111 layout under the outputs folder, infotext in the file)
and adds its row to the history database, so an image from any front end is in the gallery at
once. Front ends only translate their wire format into a GenerationRequest and call :meth:`run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.config import GenerationRequest, Limits
from sdstudio.networks import NetworkLibrary
from sdstudio.pipelines import GeneratedImage, ModelIdentity, generate
from sdstudio.runtime.history import HistoryStore, ImageRecord
from sdstudio.runtime.outputs import save_image
from sdstudio.sampling.control import CancelToken, ProgressCallback


@dataclass
class SavedImage:
    """One image a job wrote: where it lies, its seeds, A1111 parameters and infotext (no pixels)."""

    index: int
    seed: int
    subseed: int
    infotext: str
    params: dict[str, Any]
    path: Path  # absolute
    rel_path: str | None = None  # relative to the outputs folder (None when saved outside it)
    history_id: int | None = None
    width: int = 0
    height: int = 0


@dataclass
class JobResult:
    """What one request produced: its images (appended as they are saved) and the model identity."""

    request: GenerationRequest
    images: list[SavedImage] = field(default_factory=list)
    model: ModelIdentity | None = None
    model_title: str = ""  # A1111 "sd_model_name": the checkpoint's file stem or in-memory name
    # saved but not among the answer's images (an X/Y/Z plot's cells without "Include sub images":
    # A1111 answers with the grid only); job views list them after ``images``
    also_saved: list[SavedImage] = field(default_factory=list)


class ImageService:
    """Generates, saves and records images for one outputs folder (and its history database).

    ``history`` None writes files only (e.g. a CLI run with history disabled). ``folder`` puts the
    files there instead of the dated A1111 sub-folder (the CLI's ``--outdir``).
    """

    def __init__(
        self,
        outdir: str | Path,
        history: HistoryStore | None,
        *,
        save_format: str = "png",
        limits: Limits | None = None,
        networks: NetworkLibrary | None = None,
    ) -> None:
        self.outdir = Path(outdir)
        self.history = history
        self.save_format = save_format
        self.limits = limits or Limits()
        self.networks = networks  # LoRA/embedding library for <lora:...> tags and embedding names

    def run(
        self,
        model,
        request: GenerationRequest,
        *,
        job_id: str | None = None,
        result: JobResult | None = None,
        progress: ProgressCallback | None = None,
        cancel: CancelToken | None = None,
        on_saved: Callable[[SavedImage], None] | None = None,
        folder: str | Path | None = None,
        prepared: bool = False,
    ) -> JobResult:
        """Run ``request`` on ``model``; save and record every image as it finishes.

        ``result`` (optional) is filled in place, so a caller that publishes it (the queue) sees
        images appear one by one and keeps those finished before an interrupt or a failure.
        """
        result = result or JobResult(request)
        result.model = ModelIdentity.of(model)
        result.model_title = Path(model.path).stem if model.path else model.name

        def on_image(item: GeneratedImage) -> None:
            saved = self._save(item, job_id, result.model_title, folder)
            result.images.append(saved)
            if on_saved is not None:
                on_saved(saved)

        generate(
            model, request, progress=progress, cancel=cancel, on_image=on_image, limits=self.limits,
            prepared=prepared, networks=self.networks,
        )  # fmt: skip
        return result

    def save(
        self, item: GeneratedImage, *, job_id: str | None = None, model_title: str = "", folder=None
    ) -> SavedImage:
        """Save and record one image made elsewhere (e.g. a script's grid); ``folder`` as in :meth:`run`."""
        return self._save(item, job_id, model_title, folder)

    def _save(self, item: GeneratedImage, job_id: str | None, model_title: str, folder) -> SavedImage:
        request = item.request
        path = save_image(
            item.image, item.infotext, self.outdir, item.seed, kind=request.kind, ext=self.save_format,
            folder=folder,
        )  # fmt: skip
        saved = SavedImage(
            item.index, item.seed, item.subseed, item.infotext, item.params, Path(path).resolve(),
            width=item.image.width, height=item.image.height,
        )  # fmt: skip
        if self.history is not None and self.history.resolve(self.history.relative(path)) is not None:
            saved.rel_path = self.history.relative(path)
            saved.history_id = self.history.add(self._record(saved, request, job_id, model_title, item)).id
        return saved

    @staticmethod
    def _record(
        saved: SavedImage,
        request: GenerationRequest,
        job_id: str | None,
        model_title: str,
        item: GeneratedImage,
    ) -> ImageRecord:
        import json

        return ImageRecord(
            path=saved.rel_path or "",
            job_id=job_id,
            kind=request.kind,
            created_at=time.time(),
            prompt=request.prompt,
            negative_prompt=request.negative_prompt,
            seed=saved.seed,
            sampler=request.sampler_name,
            model_name=model_title,
            model_hash=item.model.model_hash,
            width=saved.width,
            height=saved.height,
            steps=request.steps,
            cfg_scale=request.cfg_scale,
            file_size=saved.path.stat().st_size,
            infotext=saved.infotext,
            request_json=json.dumps(request.to_record(), default=str),
        )
