"""A job queue: ids, states, progress, cancel/skip, fair order between clients, kept on disk.

A1111 serializes all generation under one lock and has no job ids (A1111 issues #3786, #12529,
#14096 ask for a real queue). Here every generation is a :class:`Job`; the queue runs any callable
``fn(ctx) -> result``, picking the next client round-robin so one client with a long backlog
cannot starve another. The API layer supplies functions that load the model and run a pipeline.

Workers: the queue has one thread per *worker slot*. By default there is one slot and no worker
object (the job function uses the server's own model manager: one model, one job at a time).
Given ``workers`` (e.g. :class:`~sdstudio.runtime.ray_workers.RayWorker` handles, each a Ray
actor with its own models), each slot runs one job at a time and the job function reaches its
worker as ``ctx.worker``; the next job goes to an idle worker that already holds its model
(``meta["model_key"]``) when there is one.

Persistence: with a :class:`~sdstudio.runtime.jobstore.JobStore`, every accepted job is written
before :meth:`JobQueue.submit` returns and every state change after; :meth:`JobQueue.recover`
re-queues what was queued when the server died (issue 13 item 7) and :meth:`JobQueue.get`
answers for jobs it no longer holds in memory.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdstudio.errors import SDStudioError
from sdstudio.runtime.jobstore import JobStore, StoredJob
from sdstudio.sampling.control import CancelToken, StepInfo

log = logging.getLogger(__name__)

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
    phase: str = ""  # what runs before the first step: "Loading <model>…" (empty once sampling starts)

    @property
    def fraction(self) -> float:
        return self.job_step / self.job_steps if self.job_steps else 0.0


@dataclass
class Job:
    """One queued generation; mutable state is written by the worker and read by API threads."""

    id: str
    fn: Callable[[JobContext], Any]
    client: str = ""  # fair ordering: round-robin between clients
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
    owner: str = ""  # whom max_pending_per_client counts ("" = the client)
    cancel_token: CancelToken = field(default_factory=CancelToken)
    durable: bool = False  # stored with its request: runs again after a restart
    request: Any = field(default=None, repr=False)  # the stored request of a durable job (JobStore.reopen)
    worker: str = ""  # name of the worker slot that ran it
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
    worker: Any = None  # the slot's worker object (None: the server's own in-process models)

    def set_phase(self, text: str) -> None:
        """Say what the job does before its first step ("Loading <model>…"; "" when sampling starts)."""
        self.job.progress.phase = text
        self.touch()


class Worker(Protocol):
    """What the queue needs of a worker object: a name, and the key of the model it holds."""

    name: str

    @property
    def model_key(self) -> str | None: ...


class JobQueue:
    """FIFO per client, round-robin between clients, one thread per worker slot.

    ``submit`` returns at once; ``Job.wait`` blocks until the job is final. ``cancel`` removes a
    queued job or interrupts a running one (A1111 "Interrupt": images finished so far are kept);
    ``skip`` abandons the running batch only (A1111 "Skip"). ``store`` keeps jobs on disk;
    ``load_result(job)`` rebuilds the result of a finished job read back from it.
    """

    def __init__(
        self,
        *,
        preview_interval: float = 1.0,
        keep_finished: int = 200,
        store: JobStore | None = None,
        workers: Sequence[Worker] | None = None,
        load_result: Callable[[Job], Any] | None = None,
        max_pending: int | None = None,
        max_pending_per_client: int | None = None,
    ) -> None:
        self.preview_interval = preview_interval
        self.keep_finished = keep_finished
        self.max_pending = max_pending  # queued jobs beyond this are refused (QueueFullError, HTTP 429)
        self.max_pending_per_client = max_pending_per_client  # the same, counted per client
        self.store = store
        self.load_result = load_result
        self.workers: list[Worker | None] = list(workers) if workers else [None]
        self._lock = threading.Condition()
        self._pending: OrderedDict[str, deque[Job]] = OrderedDict()  # client -> its queued jobs
        self._reserved: Counter[str] = Counter()  # client -> submits past the capacity check, not yet queued
        self._last_client: str | None = None
        self._jobs: OrderedDict[str, Job] = OrderedDict()  # every known job, oldest first
        self._busy: dict[int, Job] = {}  # slot index -> its running job
        self._seq = itertools.count(1)
        self._threads: list[threading.Thread | None] = [None] * len(self.workers)
        self._stopping = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> JobQueue:
        """Start one thread per worker slot (idempotent) and return self."""
        with self._lock:
            self._stopping = False
            for slot, thread in enumerate(self._threads):
                if thread is None or not thread.is_alive():
                    name = f"sdstudio-worker-{slot}" if slot else "sdstudio-worker"
                    thread = threading.Thread(target=self._work, args=(slot,), name=name, daemon=True)
                    self._threads[slot] = thread
                    thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel queued jobs, interrupt the running ones and join the workers.

        Durable queued jobs stay queued on disk (they run after the next start); waiters in this
        process see them cancelled.
        """
        with self._lock:
            self._stopping = True
            for job in [j for q in self._pending.values() for j in q]:
                reason = "server shutting down (queued again at the next start)" if job.durable else None
                self._finish_locked(
                    job, CANCELLED, error=reason or "server shutting down", persist=not job.durable
                )
            self._pending.clear()
            for job in self._busy.values():
                job.cancel_token.interrupt()
            self._lock.notify_all()
        deadline = time.time() + timeout
        for thread in self._threads:
            if thread is not None:
                thread.join(max(0.0, deadline - time.time()))

    def recover(
        self, rebuild: Callable[[StoredJob], Callable[[JobContext], Any] | None], *, requeue: bool = True
    ) -> list[Job]:
        """Re-queue the durable jobs the store held as queued, in their order, and return them.

        The store marks the job that was running (and queued jobs that cannot run again) failed;
        :meth:`get` reads those back. ``rebuild(stored)`` returns the job function for a stored
        request (None: it cannot run, and the job is failed). ``requeue=False`` (another live
        server owns those jobs: :mod:`sdstudio.runtime.server_lock`) leaves them alone and only
        numbers new jobs after them.
        """
        if self.store is None:
            return []
        stored_jobs = self.store.recover() if requeue else []
        with self._lock:
            self._seq = itertools.count(max(self.store.max_seq(), next(self._seq)) + 1)
        jobs = []
        for stored in stored_jobs:
            job = _job_from(stored)
            fn = rebuild(stored) if stored.state == QUEUED and stored.request is not None else None
            with self._lock:
                self._jobs[job.id] = job
                if stored.state == QUEUED and fn is not None:
                    job.fn, job.durable, job.request = fn, True, stored.request
                    self._pending.setdefault(job.client, deque()).append(job)
                elif stored.state == QUEUED:
                    self._finish_locked(
                        job, FAILED, error=stored.error or "could not re-queue after a restart"
                    )
                else:
                    job._done.set()
                self._lock.notify_all()
            jobs.append(job)
        return jobs

    # -- submitting and controlling --------------------------------------------------------
    def submit(
        self,
        fn: Callable[[JobContext], Any],
        *,
        client: str = "",
        owner: str | None = None,
        kind: str = "",
        meta: dict | None = None,
        request: Any = None,
    ) -> Job:
        """Queue ``fn`` for a worker and return its :class:`Job` (state ``queued``).

        ``client`` orders the queue (round-robin between clients); ``owner`` (default: the client)
        is whom ``max_pending_per_client`` counts, so a caller can key the cap on something the
        submitter cannot choose (its address) while clients keep their own place in the order.

        With a store the job is on disk before this returns; ``request`` (the prepared
        GenerationRequest ``fn`` runs) makes it durable, so a restart runs it again.
        """
        job = Job(id=uuid.uuid4().hex, fn=fn, client=client or "anonymous", kind=kind, meta=dict(meta or {}))
        job.owner = owner or job.client
        job.durable = request is not None and self.store is not None
        job.request = request if job.durable else None
        if self._stopping:
            raise SDStudioError("the server is shutting down", status=503)
        with self._lock:  # before the job is stored: a refused job leaves no row
            self._check_capacity_locked(job.owner)
            self._reserved[job.owner] += 1  # its slot, until it is queued or refused
        try:
            job.seq = next(self._seq)
            if self.store is not None:
                try:
                    self.store.add(job, request)
                except Exception as exc:  # disk full, read-only, locked: refuse the job clearly
                    raise SDStudioError(
                        f"could not record the job ({type(exc).__name__}: {exc})", status=503
                    ) from exc
        except BaseException:
            with self._lock:
                self._release_slot_locked(job.owner)
            raise
        with self._lock:
            self._release_slot_locked(job.owner)
            if self._stopping:
                self._finish_locked(job, CANCELLED, error="server shutting down")
                raise SDStudioError("the server is shutting down", status=503)
            self._jobs[job.id] = job
            self._pending.setdefault(job.client, deque()).append(job)
            self._trim_locked()
            self._lock.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        """A job by id: from memory, else (finished long ago, or before a restart) from the store."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None or self.store is None:
            return job
        stored = self.store.get(job_id)
        if stored is None:
            return None
        job = _job_from(stored)
        job._done.set()
        if self.load_result is not None:
            job.result = self.load_result(job)
        return job

    def jobs(self) -> list[Job]:
        """Every job the queue remembers, newest first."""
        with self._lock:
            return list(reversed(self._jobs.values()))

    @property
    def running(self) -> Job | None:
        """The running job that started first (A1111 has exactly one), or None."""
        with self._lock:
            jobs = sorted(self._busy.values(), key=lambda j: j.started_at or 0.0)
        return jobs[0] if jobs else None

    def running_jobs(self) -> list[Job]:
        """Every running job (one per busy worker slot), oldest start first."""
        with self._lock:
            return sorted(self._busy.values(), key=lambda j: j.started_at or 0.0)

    def pending(self) -> list[Job]:
        """Queued jobs in the order the worker will run them (round-robin between clients)."""
        with self._lock:
            return self._schedule_locked()

    def pending_count(self) -> int:
        """How many jobs wait (cheap: no run order computed)."""
        with self._lock:
            return self._pending_count_locked()

    def position(self, job: Job) -> int | None:
        """0-based place of a queued job in the run order; None when not queued."""
        order = self.pending()
        return next((i for i, j in enumerate(order) if j.id == job.id), None)

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued job or interrupt a running one; return the job (None if unknown)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == QUEUED:
                self._pending.get(job.client, deque()).remove(job)
                self._drop_empty_locked(job.client)
                job.fn = _finished_fn
                self._finish_locked(job, CANCELLED, error="cancelled before it started")
            elif job is not None and job.state == RUNNING:
                job.cancel_token.interrupt()
                job.version += 1
            self._lock.notify_all()
        return job if job is not None else self.get(job_id)  # a finished one only on disk: as it is

    def skip(self, job_id: str) -> Job | None:
        """Skip the running batch of a job (the job goes on with its next batch)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.state == RUNNING:
                job.cancel_token.skip()
                job.version += 1
        return job if job is not None else self.get(job_id)

    def wait_for_change(self, job: Job, version: int, timeout: float) -> int:
        """Block until ``job.version`` differs from ``version`` (or timeout); return the new version."""
        with self._lock:
            self._lock.wait_for(lambda: job.version != version, timeout)
            return job.version

    # -- worker ----------------------------------------------------------------------------
    def _work(self, slot: int) -> None:
        worker = self.workers[slot]
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._stopping or self._is_next_slot_locked(slot))
                if self._stopping:
                    return
                job = self._pop_next_locked()
                job.state, job.started_at = RUNNING, time.time()
                job.worker = worker.name if worker is not None else "local"
                job.version += 1
                self._busy[slot] = job
                self._lock.notify_all()
            self._persist(job)
            self._run(job, slot)

    def _is_next_slot_locked(self, slot: int) -> bool:
        """True when the next job in fair order should go to ``slot``: among the idle slots, one whose
        worker holds the job's model, else one holding no model, else the first idle one."""
        if slot in self._busy or not any(self._pending.values()):
            return False
        head = self._schedule_locked()[0]
        idle = [i for i in range(len(self.workers)) if i not in self._busy]
        want = head.meta.get("model_key")

        def rank(i: int) -> int:
            key = self.workers[i].model_key if self.workers[i] is not None else None
            return 0 if want is not None and key == want else 1 if key is None else 2

        return min(idle, key=rank) == slot

    def _run(self, job: Job, slot: int = 0) -> None:
        """Run one job function and record its result, error or cancellation."""
        ctx = JobContext(
            job=job,
            cancel=job.cancel_token,
            progress=lambda info: self._on_step(job, info),
            touch=lambda: self._touch(job),
            worker=self.workers[slot],
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
            self._busy.pop(slot, None)
            self._finish_locked(job, state, error=error)
            self._lock.notify_all()

    def _persist(self, job: Job) -> None:
        """Write the job's state to the store; a failing disk is logged, never kills a worker."""
        if self.store is None:
            return
        try:
            self.store.update(job)
        except Exception:
            log.exception("could not record the state of job %s", job.id)

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

    def _pending_count_locked(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def _check_capacity_locked(self, owner: str) -> None:
        """QueueFullError when the queue, or ``owner``'s share of it, is full; jobs being stored
        by concurrent submits count (their slots are reserved)."""
        waiting = self._pending_count_locked() + sum(self._reserved.values())
        if self.max_pending is not None and waiting >= self.max_pending:
            raise QueueFullError(self.max_pending, self._retry_after_locked())
        if self.max_pending_per_client is None:
            return
        mine = sum(1 for q in self._pending.values() for j in q if (j.owner or j.client) == owner)
        mine += self._reserved[owner]
        if self.max_pending_per_client is not None and mine >= self.max_pending_per_client:
            raise QueueFullError(self.max_pending_per_client, self._retry_after_locked(), per_client=True)

    def _release_slot_locked(self, owner: str) -> None:
        self._reserved[owner] -= 1
        if not self._reserved[owner]:
            del self._reserved[owner]

    def _retry_after_locked(self) -> int:
        """Seconds until a slot is likely free: the mean run time of the last finished jobs (>= 1)."""
        runs = [j.finished_at - j.started_at for j in self._jobs.values() if j.finished_at and j.started_at]
        recent = runs[-10:]
        return max(1, round(sum(recent) / len(recent))) if recent else 5

    def _drop_empty_locked(self, client: str) -> None:
        if client in self._pending and not self._pending[client]:
            del self._pending[client]

    def _finish_locked(self, job: Job, state: str, *, error: str | None = None, persist: bool = True) -> None:
        job.state, job.error, job.finished_at = state, error, time.time()
        job.request = None  # only queued jobs are written back with their request (JobStore.reopen)
        job.version += 1
        if persist:
            self._persist(job)  # on disk before any waiter wakes
        job._done.set()

    def _trim_locked(self) -> None:
        """Forget the oldest finished jobs beyond ``keep_finished`` (their images stay in history)."""
        finished = [j for j in self._jobs.values() if j.finished]
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]


def _job_from(stored: StoredJob) -> Job:
    """A finished or re-queued :class:`Job` from its stored row."""
    return Job(
        id=stored.id, fn=_finished_fn, client=stored.client, kind=stored.kind, meta=dict(stored.meta),
        seq=stored.seq, state=stored.state, created_at=stored.created_at, started_at=stored.started_at,
        finished_at=stored.finished_at, error=stored.error, error_field=stored.error_field,
        error_status=stored.error_status or 422, durable=stored.durable,
    )  # fmt: skip


class QueueFullError(SDStudioError):
    """Too many queued jobs: HTTP 429 with ``Retry-After`` (``retry_after`` seconds)."""

    def __init__(self, limit: int, retry_after: int, *, per_client: bool = False) -> None:
        whose = "this client's share of the queue is full" if per_client else "the queue is full"
        super().__init__(
            f"{whose} ({limit} jobs waiting); try again in about {retry_after} s",
            field="queue",
            status=429,
        )
        self.retry_after = retry_after


def _finished_fn(ctx: JobContext) -> None:
    """Placeholder function of a job that has run (or was cancelled); never called."""
    raise RuntimeError("job already finished")
