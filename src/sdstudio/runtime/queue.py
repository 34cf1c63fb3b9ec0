"""A job queue with one worker thread: ids, states, progress, cancel/skip, fair order between clients.

A1111 serializes all generation under one lock and has no job ids (A1111 issues #3786, #12529,
#14096 ask for a real queue). Here every generation is a :class:`Job`; a single worker thread
runs jobs one at a time (it owns the model), picking the next client round-robin so one client
with a long backlog cannot starve another. The queue runs any callable ``fn(ctx) -> result``;
the API layer supplies functions that load the model and run a pipeline.
"""

from __future__ import annotations

import itertools
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.sampling.control import CancelToken, StepInfo

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL_STATES = frozenset({DONE, FAILED, CANCELLED})


@dataclass
class Progress:
    """Where a running job is: steps across the whole job, the current batch, a live preview."""

    job_step: int = 0
    job_steps: int = 0
    step: int = 0
    steps: int = 0
    batch_index: int = 0
    batch_count: int = 0
    preview: Any = None  # PIL.Image, refreshed at most every ``preview_interval`` seconds
    preview_step: int = 0

    @property
    def fraction(self) -> float:
        return self.job_step / self.job_steps if self.job_steps else 0.0


@dataclass
class Job:
    """One queued generation; mutable state is written by the worker and read by API threads."""

    id: str
    fn: Callable[[JobContext], Any]
    client: str = ""
    kind: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    state: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = field(default_factory=Progress)
    result: Any = None
    error: str | None = None
    error_field: str | None = None
    error_status: int = 422
    cancel_token: CancelToken = field(default_factory=CancelToken)
    version: int = 0  # bumped on every change; streams poll it
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in FINAL_STATES

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job reaches a final state; return False on timeout."""
        return self._done.wait(timeout)

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left, extrapolated from the time per step so far (None before the first step)."""
        if self.state != RUNNING or not self.started_at or self.progress.job_step <= 0:
            return None
        elapsed = (now or time.time()) - self.started_at
        remaining = self.progress.job_steps - self.progress.job_step
        return max(0.0, elapsed / self.progress.job_step * remaining)


@dataclass
class JobContext:
    """What a job function receives: its cancel token and a progress callback."""

    job: Job
    cancel: CancelToken
    progress: Callable[[StepInfo], None]
    touch: Callable[[], None] = lambda: None  # tell watchers the job changed (e.g. a new image)


class JobQueue:
    """FIFO per client, round-robin between clients, one worker thread.

    ``submit`` returns at once; ``Job.wait`` blocks until the job is final. ``cancel`` removes a
    queued job or interrupts a running one (A1111 "Interrupt": images finished so far are kept);
    ``skip`` abandons the running batch only (A1111 "Skip").
    """

    def __init__(self, *, preview_interval: float = 1.0, keep_finished: int = 200) -> None:
        self.preview_interval = preview_interval
        self.keep_finished = keep_finished
        self._lock = threading.Condition()
        self._pending: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its queued jobs
        self._last_client: str | None = None
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every known job, oldest first
        self._running: Job | None = None
        self._seq = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> JobQueue:
        """Start the worker thread (idempotent) and return self."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopping = False
                self._thread = threading.Thread(target=self._work, name="sdstudio-worker", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, interrupt the running one and join the worker."""
        with self._lock:
            self._stopping = True
            for job in [j for q in self._pending.values() for j in q]:
                self._finish_locked(job, CANCELLED, error="server shutting down")
            self._pending.clear()
            if self._running is not None:
                self._running.cancel_token.interrupt()
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- submitting and controlling --------------------------------------------------------
    def submit(
        self, fn: Callable[[JobContext], Any], *, client: str = "", kind: str = "", meta: dict | None = None
    ) -> Job:
        """Queue ``fn`` for the worker and return its :class:`Job` (state ``queued``)."""
        job = Job(id=uuid.uuid4().hex, fn=fn, client=client or "anonymous", kind=kind, meta=dict(meta or {}))
        with self._lock:
            if self._stopping:
                raise SDStudioError("the server is shutting down", status=503)
            job.seq = next(self._seq)
            self._jobs[job.id] = job
            self._pending.setdefault(job.client, deque()).append(job)
            self._trim_locked()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self) -> list[Job]:
        """Every job the queue remembers, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    @property
    def running(self) -> Job | None:
        with self._lock:
            return self._running

    def pending(self) -> list[Job]:
        """Queued jobs in the order the worker will run them (round-robin between clients)."""
        with self._lock:
            return self._schedule_locked()

    def position(self, job: Job) -> int | None:
        """0-based place of a queued job in the run order; None when not queued."""
        order = self.pending()
        return next((i for i, j in enumerate(order) if j.id == job.id), None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job or interrupt a running one; return the job (None if unknown)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.finished:
                return job
            if job.state == QUEUED:
                self._pending.get(job.client, deque()).remove(job)
                self._drop_empty_locked(job.client)
                job.fn = _finished_fn
                self._finish_locked(job, CANCELLED, error="cancelled before it started")
            else:
                job.cancel_token.interrupt()
                job.version += 1
            self._lock.notify_all()
            return job

    def skip(self, job_id: str) -> Job | None:
        """Skip the running batch of a job (the job goes on with its next batch)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == RUNNING:
                job.cancel_token.skip()
                job.version += 1
            return job

    def wait_for_change(self, job: Job, version: int, timeout: float) -> int:
        """Block until ``job.version`` differs from ``version`` (or timeout); return the new version."""
        with self._lock:
            self._lock.wait_for(lambda: job.version != version, timeout)
            return job.version

    # -- worker ----------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or any(self._pending.values()))
                if self._stopping:
                    return
                job = self._pop_next_locked()
                job.state, job.started_at = RUNNING, time.time()
                job.version += 1
                self._running = job
                self._lock.notify_all()
            self._run(job)

    def _run(self, job: Job) -> None:
        """Run one job function and record its result, error or cancellation."""
        ctx = JobContext(
            job=job,
            cancel=job.cancel_token,
            progress=lambda info: self._on_step(job, info),
            touch=lambda: self._touch(job),
        )
        state, error, err_field, status, result = DONE, None, None, 422, None
        try:
            result = job.fn(ctx)
        except SDStudioError as exc:
            state, error, err_field, status = FAILED, str(exc), exc.field, exc.status
            result = job.result  # whatever the function published before failing
        except Exception as exc:  # noqa: BLE001 - a bug or runtime failure: report it, keep the worker alive
            state, error, status = FAILED, f"{type(exc).__name__}: {exc}", 500
            result = job.result
            traceback.print_exc()
        if state == DONE and job.cancel_token.interrupted:
            state, error = CANCELLED, "interrupted"
        with self._lock:
            job.result, job.error_field, job.error_status = result, err_field, status
            job.fn = _finished_fn  # drop the closure (and e.g. init images it holds) once run
            self._running = None
            self._finish_locked(job, state, error=error)
            self._lock.notify_all()

    def _touch(self, job: Job) -> None:
        with self._lock:
            job.version += 1
            self._lock.notify_all()

    def _on_step(self, job: Job, info: StepInfo) -> None:
        """Progress callback for the sampling loop: record steps, refresh the preview now and then."""
        p = job.progress
        now = time.time()
        want_preview = info.preview is not None and (
            p.preview is None
            or now - getattr(p, "_preview_time", 0.0) >= self.preview_interval
            or info.step == info.steps
        )
        preview = None
        if want_preview:
            try:
                preview = info.preview()
            except Exception:  # noqa: BLE001 - a preview must never kill a job
                preview = None
        with self._lock:
            p.job_step, p.job_steps = info.job_step, info.job_steps
            p.step, p.steps = info.step, info.steps
            p.batch_index, p.batch_count = info.batch_index, info.batch_count
            if preview is not None:
                p.preview, p.preview_step = preview, info.job_step
                p._preview_time = now  # type: ignore[attr-defined]
            job.version += 1
            self._lock.notify_all()

    # -- scheduling (call with the lock held) ----------------------------------------------
    def _schedule_locked(self) -> list[Job]:
        """Run order of queued jobs: round-robin over clients, starting after the last served one."""
        queues = {c: list(q) for c, q in self._pending.items() if q}
        clients = self._client_rotation_locked(list(queues))
        order: list[Job] = []
        while any(queues.values()):
            for c in clients:
                if queues[c]:
                    order.append(queues[c].pop(0))
        return order

    def _client_rotation_locked(self, clients: list[str]) -> list[str]:
        """Clients ordered by their oldest queued job, rotated to start after the last served one."""
        clients.sort(key=lambda c: self._pending[c][0].seq)
        if self._last_client in clients and len(clients) > 1:
            i = clients.index(self._last_client)
            clients = clients[i + 1 :] + clients[: i + 1]
        return clients

    def _pop_next_locked(self) -> Job:
        job = self._schedule_locked()[0]
        self._pending[job.client].popleft()
        self._drop_empty_locked(job.client)
        self._last_client = job.client
        return job

    def _drop_empty_locked(self, client: str) -> None:
        if client in self._pending and not self._pending[client]:
            del self._pending[client]

    def _finish_locked(self, job: Job, state: str, *, error: str | None = None) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        job.version += 1
        job._done.set()

    def _trim_locked(self) -> None:
        """Forget the oldest finished jobs beyond ``keep_finished`` (their images stay in history)."""
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]


def _finished_fn(ctx: JobContext) -> None:
    """Placeholder function of a job that has run (or was cancelled); never called."""
    raise RuntimeError("job already finished")
