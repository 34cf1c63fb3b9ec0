"""Model workers: the one interface the queue hands generation jobs to, and its in-process back end.

A worker runs a prepared request on a model it holds and hands every finished image to the
server's :class:`~sdstudio.runtime.service.ImageService`, which saves and records it. Two back
ends implement :class:`ModelWorker`: :class:`LocalWorker` (the server's own
:class:`~sdstudio.runtime.manager.ModelManager`, one model loaded, today's behaviour) and
:class:`~sdstudio.runtime.ray_workers.RayWorker` (a Ray actor with its own models, on any node of a
cluster). The queue runs one job at a time per worker and prefers a worker that already holds the
job's model (:attr:`ModelWorker.model_key`).
"""

from __future__ import annotations

from typing import Protocol

from sdstudio.config import GenerationRequest
from sdstudio.errors import CheckpointChangedError
from sdstudio.runtime.history import HistoryStore
from sdstudio.runtime.jobstore import decode_request
from sdstudio.runtime.manager import ModelManager
from sdstudio.runtime.queue import Job, JobContext
from sdstudio.runtime.service import ImageService, JobResult, SavedImage

DEFAULT_KEY = "<default>"  # ModelManager's key for the embedded default model


class ModelWorker(Protocol):
    """A model worker: generates a job's images and passes each to ``images`` to save and record."""

    name: str

    @property
    def model_key(self) -> str | None:
        """Key (``ModelEntry.model_name``) of the model it holds loaded, None when none."""

    def generate(
        self,
        ctx: JobContext,
        images: ImageService,
        request: GenerationRequest,
        model_name: str | None,
        *,
        vae: str | None = None,
    ) -> JobResult:
        """Run ``request`` on ``model_name`` (None: the current model) with the VAE choice ``vae``
        (A1111 ``sd_vae``; None: the model's own) for the job in ``ctx``."""

    def unload(self) -> None:
        """Drop the loaded model; the next job loads it again (``ModelManager.unload``)."""

    def close(self) -> None:
        """Release the worker (its process, its models)."""


class LocalWorker:
    """The in-process back end: the server's model manager and this process's torch."""

    def __init__(self, manager: ModelManager, name: str = "local") -> None:
        self.manager = manager
        self.name = name

    @property
    def model_key(self) -> str | None:
        return self.manager.loaded_name

    def generate(
        self,
        ctx: JobContext,
        images: ImageService,
        request: GenerationRequest,
        model_name: str | None,
        *,
        vae: str | None = None,
    ) -> JobResult:
        model = self.manager.acquire(model_name, on_phase=ctx.set_phase)
        ctx.set_phase("")
        self.manager.apply_vae(model, vae)
        ctx.job.meta["model"] = self.manager.loaded_title()  # as the model list names it
        result = JobResult(request)
        ctx.job.result = result  # images appear here one by one (kept if the job is interrupted)
        try:
            return images.run(
                model, request, job_id=ctx.job.id, result=result, progress=ctx.progress, cancel=ctx.cancel,
                on_saved=lambda saved: ctx.touch(), prepared=True,
            )  # fmt: skip
        except CheckpointChangedError:
            self.manager.unload()  # the next job reads the file as it is now
            raise

    def unload(self) -> None:
        self.manager.unload()

    def close(self) -> None:
        pass


def model_key(manager: ModelManager, model_name: str | None) -> str:
    """The key a worker's manager will hold after loading ``model_name`` (None: the current model)."""
    entry = manager.find(model_name) if model_name else manager.current_entry()
    return entry.model_name if entry is not None else DEFAULT_KEY


def stored_result(history: HistoryStore, job: Job) -> JobResult | None:
    """The result of a job known only from the job table: its images as the history recorded them."""
    rows, _ = history.query(job_id=job.id, limit=500)
    if not rows:
        return None
    rows.reverse()  # oldest (index 0) first
    try:
        request = decode_request(rows[0].request_json, [])
    except (ValueError, TypeError, KeyError):
        request = GenerationRequest()
    result = JobResult(request, model_title=rows[0].model_name)
    for i, r in enumerate(rows):
        path = history.resolve(r.path)
        if path is None:
            continue
        result.images.append(
            SavedImage(
                index=i,
                seed=r.seed or 0,
                subseed=0,
                infotext=r.infotext,
                params={},
                path=path,
                rel_path=r.path,
                history_id=r.id,
                width=r.width or 0,
                height=r.height or 0,
            )
        )
    return result
