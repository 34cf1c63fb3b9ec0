"""The studio behind the routes: the queue, the model manager, the history and the image service.

One :class:`Studio` per app (no globals). ``submit`` queues a converted request as a job whose
function (run by the queue's worker) acquires the model and hands the request to the runtime's
:class:`~sdstudio.runtime.service.ImageService` (run -> save -> record), the same path the CLI and
the lab use.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import Any

from sdstudio.api.convert import ConvertedRequest
from sdstudio.api.settings import ServerSettings
from sdstudio.errors import SDStudioError
from sdstudio.models.sdmodel import ModelDefaults
from sdstudio.runtime.history import HistoryStore, ReconcileReport
from sdstudio.runtime.jobstore import JobStore, StoredJob, compress_inputs, expand_inputs
from sdstudio.runtime.manager import ModelManager
from sdstudio.runtime.queue import Job, JobContext, JobQueue
from sdstudio.runtime.server_lock import ServerLock
from sdstudio.runtime.service import ImageService, JobResult, SavedImage
from sdstudio.runtime.workers import LocalWorker, ModelWorker, model_key, stored_result

log = logging.getLogger(__name__)


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
            backend=settings.backend,
            tiny_vae=settings.tiny_vae,
            models=models,
        )
        self.server_lock = ServerLock(settings.history_db)
        self.sole_server = self.server_lock.acquire()  # False: another live server shares the folder
        self.history = HistoryStore(settings.history_db, self.outdir)
        # a live server's image being written is not an orphan file: only the sole server reconciles
        skipped = ReconcileReport(rebuilt_database=self.history.rebuilt_from)
        self.reconcile_report: ReconcileReport = self.history.reconcile() if self.sole_server else skipped
        self.images = ImageService(
            self.outdir,
            self.history,
            save_format=settings.save_format,
            limits=settings.limits,
            networks=self.manager.networks,
        )
        self.jobs = JobStore(settings.history_db)
        self.workers: list[ModelWorker] = self._start_workers()
        self.queue = JobQueue(
            preview_interval=settings.preview_interval, store=self.jobs, workers=self.workers,
            load_result=lambda job: stored_result(self.history, job),
            max_pending=settings.max_queue, max_pending_per_client=settings.max_queue_per_client,
        )  # fmt: skip
        # queued when the server last stopped; a live server's jobs are its own
        self.recovered = self.queue.recover(self._rebuild, requeue=self.sole_server)
        self.server_lock.share()
        if not self.sole_server:
            log.warning("another sdstudio server uses %s: its jobs are left to it", self.outdir)
        self.options: dict[str, Any] = {}
        self._repair_lock = threading.Lock()

    def _start_workers(self) -> list[ModelWorker]:
        """The model workers: this process (default), or Ray actors (``sdstudio serve --workers ray``)."""
        if self.settings.workers != "ray":
            return [LocalWorker(self.manager)]
        from sdstudio.runtime.ray_workers import start_ray_workers

        return start_ray_workers(self.settings, resolve=lambda name: model_key(self.manager, name))

    def start(self) -> None:
        self.history.ensure_open()
        self.queue.start()

    def stop(self) -> None:
        """Stop the worker (queued jobs are cancelled) and close the history database."""
        self.queue.stop()
        for worker in self.workers:
            worker.close()
        self.jobs.close()
        self.history.close()
        self.server_lock.release()

    def image_bytes(self, saved: SavedImage) -> bytes | None:
        """The saved file's bytes (PNG with its ``parameters`` chunk); None if it was deleted since."""
        try:
            return saved.path.read_bytes()
        except OSError:
            return None

    def defaults_for(self, model_name: str | None) -> ModelDefaults:
        """What omitted knobs get on the model a request names (or the current one): native size and
        the card's declared defaults, as far as they are known before loading."""
        entry = self.manager.find(model_name) if model_name else self.manager.current_entry()
        return self.manager.defaults(entry)

    # -- jobs ------------------------------------------------------------------------------
    def submit(self, converted: ConvertedRequest, *, client: str, owner: str | None = None) -> Job:
        """Queue a generation; model names are checked now so a typo fails before queueing.
        ``owner`` is whom the per-client queue cap counts (default: ``client``)."""
        if converted.model_name:
            self.manager.find(converted.model_name)
        if converted.script is not None and converted.script.name == "x/y/z plot":
            from sdstudio.pipelines.scripts.xyz_grid import checkpoint_names

            for name in checkpoint_names(converted.script.options):  # a typo fails now, not mid-grid
                try:
                    self.manager.find(name)
                except SDStudioError as exc:
                    raise SDStudioError(f"X/Y/Z Checkpoint name: {exc}", field="script_args") from None
        self._check_networks(converted)
        self.ensure_store()
        meta = {
            "warnings": list(converted.warnings),
            "prompt": converted.request.prompt,
            "model": converted.model_name,
            "requested_model": converted.model_name,
            "vae": converted.vae,
            "model_key": model_key(self.manager, converted.model_name),
        }
        # while it waits, the job holds its init images as PNG bytes (the store writes those same bytes)
        queued = dataclasses.replace(converted, request=compress_inputs(converted.request))
        return self.queue.submit(
            lambda ctx: self._generate(ctx, queued), client=client, owner=owner, kind=converted.kind, meta=meta,
            request=queued.request if converted.script is None else None,  # scripts: memory only
        )  # fmt: skip

    def ensure_store(self) -> None:
        """Before a job is acknowledged: when the database broke under the server (overwritten,
        replaced, deleted with the outputs folder: :meth:`JobStore.health`), reopen it, write every
        job the queue knows back (queued ones with their requests) and re-index the image files, so
        no acknowledged job is lost; 503 naming the reason when that is not possible."""
        problem = self.jobs.health()
        if problem is None:
            return
        with self._repair_lock:
            problem = self.jobs.health()
            if problem is None:
                return
            if not self.sole_server:  # another live server uses the file: not ours to rebuild
                raise SDStudioError(f"{problem}; new jobs are refused until the server restarts", status=503)
            log.warning("%s: reopening it and writing back %d known jobs", problem, len(self.queue.jobs()))
            try:
                self.history.close()
                aside = self.jobs.reopen(self.queue.jobs())
                self.history.ensure_open()
                self.history.rebuilt_from = aside or self.history.rebuilt_from
                self.reconcile_report = self.history.reconcile()
            except Exception as exc:  # a read-only or vanished disk: refuse until it is back
                raise SDStudioError(
                    f"{problem}, and it could not be rebuilt ({type(exc).__name__}: {exc}); "
                    "new jobs are refused until it can",
                    status=503,
                ) from exc

    def _rebuild(self, stored: StoredJob):
        """The job function of a generation that was queued when the server stopped."""
        converted = ConvertedRequest(
            stored.request, model_name=stored.meta.get("requested_model"),
            warnings=list(stored.meta.get("warnings", [])), vae=stored.meta.get("vae"),
        )  # fmt: skip
        return lambda ctx: self._generate(ctx, converted)

    def _generate(self, ctx: JobContext, converted: ConvertedRequest) -> JobResult:
        """Worker side of a job: the slot's model worker runs it; the image service saves and records."""
        vae = converted.vae or self.options.get("sd_vae")
        converted = dataclasses.replace(converted, request=expand_inputs(converted.request))
        if converted.script is not None:  # A1111 script_name: the script calls the image service per cell
            return self._run_script(ctx, converted, vae)
        worker = ctx.worker or self.workers[0]
        return worker.generate(ctx, self.images, converted.request, converted.model_name, vae=vae)

    def _run_script(self, ctx: JobContext, converted: ConvertedRequest, vae: str | None) -> JobResult:
        """A script job (X/Y/Z plot, prompt matrix, ...) runs on this process's model manager."""
        from sdstudio.api.scripts import run_script_job

        model = self.manager.acquire(converted.model_name, on_phase=ctx.set_phase)
        ctx.set_phase("")
        self.manager.apply_vae(model, vae)
        ctx.job.meta["model"] = self.manager.loaded_title()  # as the model list names it
        result = JobResult(converted.request)
        ctx.job.result = result  # images appear here one by one (kept if the job is interrupted)
        return run_script_job(self, ctx, converted, model, result)

    def _check_networks(self, converted: ConvertedRequest) -> None:
        """A VAE name that does not exist and every missing LoRA of the prompt fail before queueing."""
        from sdstudio.networks.reuse import resolve_prompt_networks
        from sdstudio.networks.vae import resolve_vae

        if converted.vae:
            resolve_vae(converted.vae, None, self.manager.networks)
        resolve_prompt_networks(converted.request.prompt, self.manager.networks)
