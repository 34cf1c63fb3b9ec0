"""Job queue unit tests with small fake job functions (no models): states, order, cancel, skip."""

from __future__ import annotations

import threading
import time

import pytest

from sdstudio.errors import SDStudioError
from sdstudio.runtime.queue import CANCELLED, DONE, FAILED, QUEUED, RUNNING, JobQueue
from sdstudio.sampling.control import StepInfo


@pytest.fixture
def queue():
    q = JobQueue(preview_interval=0.0)
    yield q
    q.stop()


def _gate_job(gate: threading.Event, log: list, name: str):
    """A job that records its name, then blocks until ``gate`` opens."""

    def fn(ctx):
        log.append(name)
        gate.wait(5)
        return name

    return fn


def _record(log: list, name: str):
    def fn(ctx):
        log.append(name)
        return name

    return fn


def _wait_state(job, state, timeout=5.0):
    deadline = time.time() + timeout
    while job.state != state and time.time() < deadline:
        time.sleep(0.005)
    assert job.state == state


def test_states_result_and_error(queue):
    queue.start()
    ok = queue.submit(lambda ctx: 41 + 1, client="a")
    bad = queue.submit(
        lambda ctx: (_ for _ in ()).throw(SDStudioError("steps too big", field="steps")), client="a"
    )
    crash = queue.submit(lambda ctx: 1 / 0, client="a")
    for job in (ok, bad, crash):
        assert job.wait(5)
    assert (ok.state, ok.result) == (DONE, 42)
    assert (bad.state, bad.error, bad.error_field, bad.error_status) == (
        FAILED,
        "steps too big",
        "steps",
        422,
    )
    assert crash.state == FAILED and "ZeroDivisionError" in crash.error and crash.error_status == 500
    assert len({ok.id, bad.id, crash.id}) == 3


def test_round_robin_between_clients(queue):
    """Client A queues 3 jobs before B queues 2: the worker alternates A, B, A, B, A."""
    log: list[str] = []
    gate = threading.Event()
    first = queue.submit(_gate_job(gate, log, "a0"), client="A")
    queue.start()
    _wait_state(first, RUNNING)
    jobs = [queue.submit(_record(log, f"a{i}"), client="A") for i in (1, 2)]
    jobs += [queue.submit(_record(log, f"b{i}"), client="B") for i in (0, 1)]
    assert [j.client for j in queue.pending()] == ["B", "A", "B", "A"]
    assert queue.position(jobs[2]) == 0  # b0 runs next although a1 and a2 were queued first
    gate.set()
    for job in jobs:
        assert job.wait(5)
    assert log == ["a0", "b0", "a1", "b1", "a2"]


def test_cancel_queued_and_interrupt_running(queue):
    """Two clients: one cancels its queued job and interrupts its running one; the other finishes."""
    started = threading.Event()

    def long_job(ctx):
        started.set()
        for step in range(200):
            if ctx.cancel.interrupted:
                return f"stopped at {step}"
            ctx.progress(StepInfo(step + 1, 200, 0, 1, step + 1, 200))
            time.sleep(0.01)
        return "finished"

    queue.start()
    running = queue.submit(long_job, client="A")
    assert started.wait(5)
    queued_a = queue.submit(_record([], "never"), client="A")
    other = queue.submit(lambda ctx: "b done", client="B")
    assert queue.cancel(queued_a.id).state == CANCELLED
    queue.cancel(running.id)
    assert running.wait(5) and other.wait(5)
    assert running.state == CANCELLED and running.result.startswith("stopped at")
    assert queued_a.state == CANCELLED and queued_a.started_at is None
    assert (other.state, other.result) == (DONE, "b done")


def test_skip_sets_token_only_for_running_job(queue):
    gate = threading.Event()
    queue.start()
    running = queue.submit(_gate_job(gate, [], "r"), client="A")
    _wait_state(running, RUNNING)
    waiting = queue.submit(lambda ctx: ctx.cancel.skipped, client="A")
    queue.skip(running.id)
    queue.skip(waiting.id)  # not running: no effect
    assert running.cancel_token.skipped and not running.cancel_token.interrupted
    gate.set()
    assert waiting.wait(5) and waiting.result is False
    assert waiting.state == DONE


def test_progress_eta_and_preview(queue):
    from PIL import Image

    seen = {}
    release = threading.Event()

    def job_fn(ctx):
        for i in range(1, 5):
            ctx.progress(StepInfo(i, 4, 0, 2, i, 8, preview=lambda: Image.new("RGB", (8, 8), "red")))
            time.sleep(0.02)
        seen["mid"] = (ctx.job.progress.job_step, ctx.job.progress.job_steps, ctx.job.eta_seconds())
        release.wait(5)
        return "ok"

    queue.start()
    job = queue.submit(job_fn)
    deadline = time.time() + 5
    while "mid" not in seen and time.time() < deadline:
        time.sleep(0.01)
    step, steps, eta = seen["mid"]
    assert (step, steps) == (4, 8)
    assert eta is not None and eta > 0  # 4 steps left at the measured pace
    assert job.progress.preview.size == (8, 8)
    assert job.progress.fraction == pytest.approx(0.5)
    release.set()
    assert job.wait(5) and job.eta_seconds() is None


def test_stop_cancels_pending_and_refuses_new(queue):
    gate = threading.Event()
    running = queue.submit(_gate_job(gate, [], "r"))
    waiting = queue.submit(_record([], "w"))
    assert waiting.state == QUEUED
    queue.start()
    _wait_state(running, RUNNING)
    stopper = threading.Thread(target=queue.stop)  # stop() joins the worker, which waits on the gate
    stopper.start()
    _wait_state(waiting, CANCELLED)  # cancelled while the running job still held the worker
    gate.set()
    stopper.join(10)
    assert waiting.state == CANCELLED and waiting.started_at is None
    with pytest.raises(SDStudioError):
        queue.submit(_record([], "late"))


def test_finished_jobs_release_their_function(queue):
    """A finished job keeps its result but not the closure (which may hold big init images)."""
    import gc
    import weakref

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)
    queue.start()
    job = queue.submit(lambda ctx, p=payload: "ok")
    del payload
    assert job.wait(5) and job.result == "ok"
    gc.collect()
    assert ref() is None
