"""The Ray back end of :class:`~sdstudio.runtime.workers.ModelWorker`: one model worker per GPU/CPU slot.

``sdstudio serve --workers ray`` starts a local Ray cluster (or joins one with ``--ray-address
auto|HOST:PORT``) and runs ``N`` :class:`ModelActor` actors, each with its own
:class:`~sdstudio.runtime.manager.ModelManager` that loads models itself on its node. The server
keeps the queue, the files and the history: an actor sends back each finished image as lossless
PNG bytes with its seeds, parameters and infotext, and the server writes it atomically and records
it (:meth:`ImageService.save`), so an actor that dies leaves nothing half-written.

Across the boundary (Ray actors, https://docs.ray.io/en/latest/ray-core/actors.html):
- the actor is *threaded* (``max_concurrency`` > 1), so ``poll`` and ``control`` run while
  ``generate`` samples in another thread of the same actor;
- the server pulls progress, the latest preview (PNG) and finished images with ``poll`` every
  :data:`POLL_S` seconds and forwards cancel ("Interrupt") and skip with ``control``;
- a dead actor (``RayActorError``) fails its job with "worker died: ..." and is replaced by a new
  actor before the next job; the server stays up.

``ray`` is an optional dependency (``pip install 'sdstudio[ray]'``); this module imports it only
inside functions, so the default install never needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdstudio.config import GenerationRequest, Limits
from sdstudio.errors import CheckpointChangedError, SDStudioError
from sdstudio.runtime.jobstore import open_png, png_bytes
from sdstudio.runtime.queue import JobContext
from sdstudio.runtime.service import ImageService, JobResult
from sdstudio.sampling.control import CancelToken, StepInfo

log = logging.getLogger(__name__)

POLL_S = 0.1  # seconds between progress polls of a running actor
START_TIMEOUT_S = 300.0  # a new actor must answer ping within this (imports torch, maybe on a cold node)
ACTOR_THREADS = 4  # generate + poll + control + ping can run at once
_PASSED_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "OMP_WAIT_POLICY")


@dataclass(frozen=True)
class ActorSpec:
    """What a model actor needs to build its own model manager (plain values: sent to the actor)."""

    models_dir: str | None
    default_model: str | None
    device: str
    precision: str
    limits: Limits
    preview_interval: float
    threads: int = 0  # torch CPU threads (0 = torch's default)
    backend: str | None = None  # what runs the UNet and VAE decoder (--backend; None: the default)
    tiny_vae: str | None = None  # --tiny-vae: for models without a taesd/ of their own


# -- actor side ------------------------------------------------------------------------------
@dataclass
class _ActorJob:
    """One job inside an actor: its cancel token and what the next poll hands over."""

    token: CancelToken = field(default_factory=CancelToken)
    lock: threading.Lock = field(default_factory=threading.Lock)
    step: dict[str, int] | None = None
    preview: bytes | None = None
    preview_time: float = 0.0
    images: list[dict[str, Any]] = field(default_factory=list)
    model: dict[str, Any] | None = None
    done: bool = False


class ModelActor:
    """A Ray actor holding one model manager; runs one generation at a time (see module docstring)."""

    def __init__(self, spec: ActorSpec) -> None:
        import torch

        from sdstudio.runtime.manager import ModelManager

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.spec = spec
        self.manager = ModelManager(
            spec.models_dir, default_model=spec.default_model, device=spec.device, precision=spec.precision,
            backend=spec.backend, tiny_vae=spec.tiny_vae,
        )
        self._jobs: dict[str, _ActorJob] = {}
        self._lock = threading.Lock()

    def unload(self) -> None:
        """Drop the model this actor holds loaded (``ModelManager.unload``)."""
        self.manager.unload()

    def ping(self) -> dict[str, Any]:
        """Where this actor runs: its process id and node."""
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def generate(
        self, job_id: str, request: GenerationRequest, model_name: str | None, vae: str | None = None
    ) -> dict[str, Any]:
        """Run a prepared request; images go to the job's buffer for :meth:`poll`. Errors are returned
        as values (``{"error": ..., "field": ..., "status": ...}``), never raised through Ray."""
        from sdstudio.pipelines import ModelIdentity, generate

        job = _ActorJob()
        with self._lock:
            self._jobs[job_id] = job
        try:
            model = self.manager.acquire(model_name)
            self.manager.apply_vae(model, vae)
            title = Path(model.path).stem if model.path else model.name
            with job.lock:
                job.model = {
                    "identity": ModelIdentity.of(model),
                    "title": title,
                    "listed": self.manager.loaded_title(),
                }
            generate(
                model, request, progress=lambda info: self._on_step(job, info), cancel=job.token,
                on_image=lambda item: self._on_image(job, request, item), limits=self.spec.limits, prepared=True,
                networks=self.manager.networks,
            )  # fmt: skip
            return {"model_key": self.manager.loaded_name}
        except CheckpointChangedError as exc:
            self.manager.unload()  # the next job reads the file as it is now
            return {"error": str(exc), "field": exc.field, "status": exc.status}
        except SDStudioError as exc:
            return {"error": str(exc), "field": exc.field, "status": exc.status}
        except Exception as exc:  # noqa: BLE001 - reported to the server as the job's error
            return {"error": f"{type(exc).__name__}: {exc}", "field": None, "status": 500}
        finally:
            with job.lock:
                job.done = True

    def poll(self, job_id: str) -> dict[str, Any]:
        """Progress, a new preview (PNG) and finished images since the last poll."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return {}
        with job.lock:
            out = {"step": job.step, "preview": job.preview, "images": job.images, "model": job.model}
            job.preview, job.images, job.model = None, [], None
            if job.done:
                with self._lock:
                    self._jobs.pop(job_id, None)
        return out

    def control(self, job_id: str, what: str) -> None:
        """``interrupt`` (A1111 Interrupt) or ``skip`` (A1111 Skip) the job's sampling."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.token.interrupt() if what == "interrupt" else job.token.skip()

    def _on_step(self, job: _ActorJob, info: StepInfo) -> None:
        now = time.time()
        preview = None
        if info.preview is not None and (
            now - job.preview_time >= self.spec.preview_interval or info.step == info.steps
        ):
            try:
                preview = png_bytes(info.preview())
            except Exception:  # noqa: BLE001 - a preview must never kill a job
                preview = None
        with job.lock:
            job.step = {k: getattr(info, k) for k in _STEP_FIELDS}
            if preview is not None:
                job.preview, job.preview_time = preview, now

    @staticmethod
    def _on_image(job: _ActorJob, request: GenerationRequest, item: Any) -> None:
        changes = {
            f.name: getattr(item.request, f.name)
            for f in dataclasses.fields(GenerationRequest)
            if f.name not in ("init_images", "mask")
            and getattr(item.request, f.name) != getattr(request, f.name)
        }
        sent = {
            "png": png_bytes(item.image), "seed": item.seed, "subseed": item.subseed, "infotext": item.infotext,
            "index": item.index, "params": item.params, "model": item.model, "changes": changes,
        }  # fmt: skip
        with job.lock:
            job.images.append(sent)


_STEP_FIELDS = ("step", "steps", "batch_index", "batch_count", "job_step", "job_steps")


# -- server side -----------------------------------------------------------------------------
class RayWorker:
    """The server's handle on one model actor: runs a job on it, replaces it when it dies."""

    def __init__(
        self, name: str, spec: ActorSpec, options: dict[str, Any], resolve: Callable[[str | None], str]
    ) -> None:
        self.name = name
        self.spec = spec
        self.options = options
        self.resolve = resolve  # model name (None: the server's current model) -> its key
        self.replaced = 0  # how many times a dead actor was replaced
        self._model_key: str | None = None
        self.actor = self._spawn()

    @property
    def model_key(self) -> str | None:
        return self._model_key

    def _spawn(self):
        import ray

        actor_class = ray.remote(ModelActor)
        return actor_class.options(max_concurrency=ACTOR_THREADS, **self.options).remote(self.spec)

    def ping(self, timeout: float = START_TIMEOUT_S) -> dict[str, Any]:
        import ray

        return ray.get(self.actor.ping.remote(), timeout=timeout)

    def replace(self) -> None:
        """Kill what is left of the actor and start a fresh one (it loads its models again)."""
        import ray

        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("killing %s: %s", self.name, exc)
        self.actor, self._model_key = self._spawn(), None
        self.replaced += 1

    def generate(
        self,
        ctx: JobContext,
        images: ImageService,
        request: GenerationRequest,
        model_name: str | None,
        *,
        vae: str | None = None,
    ) -> JobResult:
        """Run the job on the actor (which resolves LoRA, embeddings and ``vae`` in its own models
        folder); save and record each image here as it arrives."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        key = self.resolve(model_name)
        name = model_name or (None if key == "<default>" else key)
        result = JobResult(request)
        ctx.job.result = result
        try:
            self._ensure_alive()
            ref = self.actor.generate.remote(ctx.job.id, request, name, vae)
            interrupted = False
            while True:
                ready, _ = ray.wait([ref], timeout=POLL_S)
                interrupted = self._forward_controls(ctx, interrupted)
                self._apply(ctx, images, result, request, ray.get(self.actor.poll.remote(ctx.job.id)))
                if ready:
                    break
            outcome = ray.get(ref)
        except (RayActorError, GetTimeoutError) as exc:
            self.replace()
            raise SDStudioError(
                f"worker died: {self.name} ({_brief(exc)}); it was replaced", status=500
            ) from exc
        if "error" in outcome:
            raise SDStudioError(outcome["error"], field=outcome["field"], status=outcome["status"])
        self._model_key = outcome["model_key"]
        return result

    def unload(self) -> None:
        """Drop the actor's loaded model; its next job loads it again."""
        import ray

        ray.get(self.actor.unload.remote(), timeout=START_TIMEOUT_S)
        self._model_key = None

    def close(self) -> None:
        import ray

        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - Ray already shut down
            log.debug("closing %s: %s", self.name, exc)

    def _ensure_alive(self) -> None:
        """Replace an actor that died while idle, so the next job does not fail for it."""
        from ray.exceptions import RayActorError

        try:
            self.ping()
        except RayActorError:
            self.replace()
            self.ping()

    def _forward_controls(self, ctx: JobContext, interrupted: bool) -> bool:
        """Send the server token's interrupt (once) and skips to the actor's token."""
        if ctx.cancel.interrupted and not interrupted:
            self.actor.control.remote(ctx.job.id, "interrupt")
            interrupted = True
        if ctx.cancel.skipped:
            ctx.cancel.clear_skip()
            self.actor.control.remote(ctx.job.id, "skip")
        return interrupted

    def _apply(
        self,
        ctx: JobContext,
        images: ImageService,
        result: JobResult,
        request: GenerationRequest,
        reply: dict,
    ) -> None:
        """One poll's reply into the job: model identity, progress (+ preview), saved images."""
        from sdstudio.pipelines import GeneratedImage

        if reply.get("model"):
            result.model, result.model_title = reply["model"]["identity"], reply["model"]["title"]
            ctx.job.meta["model"] = reply["model"]["listed"]  # as the model list names it
        if reply.get("step"):
            png = reply.get("preview")
            preview = (lambda data=png: open_png(data)) if png else None
            ctx.progress(StepInfo(**reply["step"], preview=preview))
        for sent in reply.get("images", []):
            item = GeneratedImage(
                image=open_png(sent["png"]), seed=sent["seed"], subseed=sent["subseed"], infotext=sent["infotext"],
                index=sent["index"], request=request.replace(**sent["changes"]), params=sent["params"],
                model=sent["model"],
            )  # fmt: skip
            result.images.append(images.save(item, job_id=ctx.job.id, model_title=result.model_title))
            ctx.touch()


def _brief(exc: Exception) -> str:
    """The first line of a Ray error (its full text is a page of context)."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


# -- starting ----------------------------------------------------------------------------------
def start_ray_workers(settings: Any, *, resolve: Callable[[str | None], str]) -> list[RayWorker]:
    """Start or join a Ray cluster and one :class:`RayWorker` per slot (see :func:`slot_plan`).

    ``settings.ray_address`` None starts a local cluster in this process (unless Ray is already
    initialised, e.g. by a test); ``auto`` or ``HOST:PORT`` joins a running one (``ray start``).
    """
    try:
        import ray
    except ImportError as exc:
        raise SDStudioError(
            "--workers ray needs Ray: pip install 'sdstudio[ray]' (or pip install ray)", field="workers"
        ) from exc
    if not ray.is_initialized():
        ray.init(address=settings.ray_address, logging_level="WARNING", log_to_driver=False)
    count, options, device, threads = slot_plan(
        ray.cluster_resources(), settings.ray_workers, settings.device
    )
    spec = ActorSpec(
        models_dir=str(Path(settings.models_dir).resolve()) if settings.models_dir else None,
        default_model=str(Path(settings.model).resolve()) if settings.model else None,
        device=device, precision=settings.precision, limits=settings.limits,
        preview_interval=settings.preview_interval, threads=threads, backend=settings.backend,
        tiny_vae=str(Path(settings.tiny_vae).resolve()) if settings.tiny_vae else None,
    )  # fmt: skip
    options = {**options, "runtime_env": actor_env()}
    workers = [RayWorker(f"ray-{i}", spec, options, resolve) for i in range(count)]
    for worker in workers:
        worker.ping()  # fail at start-up, not on the first job, when actors cannot start
    return workers


def slot_plan(
    resources: dict[str, float], requested: int, device: str
) -> tuple[int, dict[str, Any], str, int]:
    """``(workers, actor options, device, torch threads)`` for a cluster's resources.

    With GPUs: one worker per GPU (``num_gpus=1``; Ray sets CUDA_VISIBLE_DEVICES, so the actor
    uses ``cuda``). Without: ``requested`` workers (default 1) sharing the CPUs evenly, each with
    that many torch threads (more workers than CPUs is an error: Ray would never place them).
    """
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if gpus and device != "cpu":
        count = requested or gpus
        return count, {"num_gpus": 1, "num_cpus": 1}, "cuda", 0
    count = requested or 1
    if count > cpus:
        raise SDStudioError(
            f"--ray-workers {count}: the Ray cluster has only {cpus} CPUs (one worker needs at least one)",
            field="ray_workers",
        )
    per = cpus // count
    return count, {"num_cpus": per}, "cpu", per


def actor_env() -> dict[str, Any]:
    """Ray runtime env: this sdstudio's source folder first on PYTHONPATH (the same code on this
    machine; other nodes use their own install) and the offline switches."""
    import sdstudio

    src = str(Path(sdstudio.__file__).resolve().parent.parent)
    paths = [src] + [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {"PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}
    env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    return {"env_vars": env}
