"""The studio service: the queue, the model manager and the history store behind the routes.

One :class:`Studio` per app (no globals). ``submit`` turns a converted request into a queued
job whose function (run by the queue's single worker) loads/switches the model, runs the
pipeline, writes every finished image atomically under ``outputs/`` and records it in the
history database.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.api.convert import ConvertedRequest
from sdstudio.api.settings import ServerSettings
from sdstudio.errors import SDStudioError
from sdstudio.runtime.history import HistoryStore, ImageRecord, ReconcileReport
from sdstudio.runtime.manager import ModelManager
from sdstudio.runtime.queue import JobContext, JobQueue

log = logging.getLogger(__name__)


@dataclass
class SavedImage:
    """One image a job produced: the generated image plus where it was saved."""

    index: int
    seed: int
    subseed: int
    infotext: str
    image: Any  # PIL.Image until saved, then None (read the file)
    path: str | None = None  # relative to outputs/
    history_id: int | None = None


@dataclass
class JobResult:
    """What a generation job returns (kept on the Job while the queue remembers it)."""

    images: list[SavedImage] = field(default_factory=list)
    model_name: str = ""
    model_hash: str = ""
    vae_name: str = ""
    vae_hash: str = ""
    is_inpainting: bool = False


class Studio:
    """Queue + models + history for one server."""

    def __init__(
        self, settings: ServerSettings, *, models: dict[str, Any] | None = None, manager=None
    ) -> None:
        self.settings = settings
        self.outdir = Path(settings.outdir)
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.manager = manager or ModelManager(
            settings.models_dir,
            default_model=settings.model,
            device=settings.device,
            precision=settings.precision,
            models=models,
        )
        self.history = HistoryStore(settings.history_db, self.outdir)
        self.reconcile_report: ReconcileReport = self.history.reconcile()
        self.queue = JobQueue(preview_interval=settings.preview_interval)
        self.options: dict[str, Any] = {}

    def start(self) -> None:
        self.history.ensure_open()
        self.queue.start()

    def image_bytes(self, saved: SavedImage) -> bytes | None:
        """The saved file's bytes (PNG with its ``parameters`` chunk); None if it was deleted since."""
        target = self.history.resolve(saved.path) if saved.path else None
        try:
            return target.read_bytes() if target is not None else None
        except OSError:
            return None

    def stop(self) -> None:
        """Stop the worker (queued jobs are cancelled) and close the history database."""
        self.queue.stop()
        self.history.close()

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, converted: ConvertedRequest, *, client: str) -> Any:
        """Queue a generation; model names are checked now so a typo fails before queueing."""
        if converted.model_name:
            self.manager.find(converted.model_name)
        meta = {
            "warnings": list(converted.warnings),
            "prompt": converted.request.prompt,
            "model": converted.model_name,
        }
        return self.queue.submit(
            lambda ctx: self._generate(ctx, converted), client=client, kind=converted.kind, meta=meta
        )

    def _generate(self, ctx: JobContext, converted: ConvertedRequest) -> JobResult:
        """Worker side of a job: model, pipeline, then save and record each image as it finishes."""
        model = self.manager.acquire(converted.model_name)
        request = converted.request.with_resolved_seeds()
        ctx.job.meta["model"] = getattr(model, "name", "") or self.manager.loaded_name
        result = JobResult(
            model_name=_model_title(model, self.manager),
            model_hash=getattr(model, "model_hash", "") or "",
            vae_name=getattr(model, "vae_name", "") or "",
            vae_hash=getattr(model, "vae_hash", "") or "",
            is_inpainting=bool(getattr(model, "is_inpainting", False)),
        )
        ctx.job.result = result  # images appear here one by one (kept if the job is interrupted)

        def on_image(gi: Any) -> None:
            saved = SavedImage(
                index=gi.index, seed=gi.seed, subseed=gi.subseed, infotext=gi.infotext, image=gi.image
            )
            self._save(saved, ctx.job.id, converted, result)
            saved.image = None  # the file is the image from now on: finished jobs hold no pixels
            result.images.append(saved)
            ctx.touch()

        self._run_pipeline(model, converted, request, ctx, on_image)
        return result

    def _run_pipeline(
        self, model: Any, converted: ConvertedRequest, request: Any, ctx: JobContext, on_image: Any
    ) -> list[Any]:
        kw = {
            "progress": ctx.progress,
            "cancel": ctx.cancel,
            "on_image": on_image,
            "limits": self.settings.limits,
        }
        if converted.kind == "txt2img":
            from sdstudio.pipelines import txt2img

            return txt2img(model, request, **kw)
        if converted.outpaint:
            from sdstudio.pipelines.outpaint import outpaint

            left, right, up, down = converted.outpaint
            image = converted.init_images[0]
            return outpaint(model, request, image, left=left, right=right, up=up, down=down, **kw)
        try:
            # the function, not the package attribute (which becomes the submodule once imported)
            from sdstudio.pipelines.img2img import img2img
        except ImportError:
            raise SDStudioError(
                "image-to-image is not available in this build yet", field="init_images", status=501
            )
        return img2img(model, request, init_images=converted.init_images, mask=converted.mask, **kw)

    def _save(self, saved: SavedImage, job_id: str, converted: ConvertedRequest, result: JobResult) -> None:
        """Write the image atomically under outputs/<kind>-images/ and add its history row."""
        from sdstudio.runtime.outputs import save_image

        kind, ext = converted.kind, self.settings.save_format
        path = Path(save_image(saved.image, saved.infotext, self.outdir, saved.seed, kind=kind, ext=ext))
        saved.path = self.history.relative(path)
        r = converted.request
        record = ImageRecord(
            path=saved.path,
            job_id=job_id,
            kind=converted.kind,
            created_at=time.time(),
            prompt=r.prompt,
            negative_prompt=r.negative_prompt,
            seed=saved.seed,
            sampler=r.sampler_name,
            model_name=result.model_name,
            model_hash=result.model_hash,
            width=saved.image.width,
            height=saved.image.height,
            steps=r.steps,
            cfg_scale=r.cfg_scale,
            file_size=path.stat().st_size,
            infotext=saved.infotext,
            request_json=json.dumps(_request_json(converted), default=str),
        )
        saved.history_id = self.history.add(record).id


def _model_title(model: Any, manager: ModelManager) -> str:
    """A1111 "Model" name: the checkpoint's file stem, or the in-memory model's name."""
    path = getattr(model, "path", "") or ""
    if path:
        return Path(path).stem
    return getattr(model, "name", "") or (manager.loaded_name or "")


def _request_json(converted: ConvertedRequest) -> dict[str, Any]:
    r = asdict(converted.request)
    r["kind"] = converted.kind
    r["styles"] = list(r.get("styles") or ())
    return r
