"""The queue on disk (issue 13 item 7): the jobs table, re-queue order, running -> failed, reads back."""

from __future__ import annotations

import sqlite3
import threading
import time

import numpy as np
import pytest
from PIL import Image

from sdstudio.config import GenerationRequest, HiresSettings
from sdstudio.runtime.jobstore import NOT_DURABLE, RAN_AT_STOP, JobStore, decode_request, encode_request
from sdstudio.runtime.queue import CANCELLED, DONE, FAILED, QUEUED, JobQueue


def _request(prompt: str, **kw) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, seed=5, subseed=6, steps=3, **kw)


def _noise_image(seed: int, mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (24, 40, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


def test_request_round_trip_keeps_every_field_and_pixel():
    init, mask = _noise_image(1), _noise_image(2, "L")
    req = _request(
        "a \ud800 cat", init_images=(init,), mask=mask, denoising_strength=0.4, styles=("s",),
        hires=HiresSettings(scale=1.5), outpaint=(8, 0, 16, 0), extra={"Init image hash": "abc"},
    )  # fmt: skip
    text, images = encode_request(req)
    back = decode_request(text, images)
    assert back.replace(init_images=(), mask=None) == req.replace(init_images=(), mask=None)
    assert np.array_equal(np.asarray(back.init_images[0]), np.asarray(init))
    assert back.mask.mode == "L" and np.array_equal(np.asarray(back.mask), np.asarray(mask))
    assert back.mode == req.mode == "outpaint"


def _kill(queue: JobQueue) -> None:
    """What kill -9 leaves: the worker threads stop taking jobs, nothing more is written."""
    with queue._lock:
        queue._stopping = True
        queue._lock.notify_all()


def test_restart_requeues_in_order_and_fails_the_running_job(tmp_path):
    db = tmp_path / "history.sqlite3"
    gate, started = threading.Event(), threading.Event()

    def blocking(ctx):
        started.set()
        gate.wait(10)

    q = JobQueue(store=JobStore(db))
    q.start()
    running = q.submit(blocking, client="a", kind="txt2img", request=_request("first"))
    assert started.wait(5)
    a2 = q.submit(lambda ctx: None, client="a", kind="txt2img", request=_request("a2"), meta={"prompt": "a2"})
    b1 = q.submit(
        lambda ctx: None, client="b", kind="img2img", request=_request("b1", init_images=(_noise_image(3),))
    )
    a3 = q.submit(lambda ctx: None, client="a", kind="txt2img", request=_request("a3"))
    lab = q.submit(lambda ctx: None, client="lab", kind="lab")  # no request: memory only
    gone = q.submit(lambda ctx: None, client="a", request=_request("gone"))
    q.cancel(gone.id)
    _kill(q)  # the process dies here: `running` is still running (its thread blocks), the rest queued

    q2 = JobQueue(store=JobStore(db))
    ran: list[str] = []
    requeued = q2.recover(lambda stored: lambda ctx, p=stored.request.prompt: ran.append(p))
    assert [j.id for j in requeued] == [a2.id, b1.id, a3.id]  # submission order; lab and cancelled left out
    assert [j.id for j in q2.pending()] == [a2.id, b1.id, a3.id]  # round-robin over a, b from the oldest
    q2.start()
    for job in requeued:
        assert job.wait(5) and job.state == DONE
    assert ran == ["a2", "b1", "a3"]
    was_running = q2.get(running.id)
    assert (was_running.state, was_running.error) == (FAILED, RAN_AT_STOP)
    assert (q2.get(lab.id).state, q2.get(lab.id).error) == (FAILED, NOT_DURABLE)
    assert q2.get(gone.id).state == CANCELLED and q2.get("nope") is None
    assert q2.cancel(running.id).state == FAILED and q2.skip(lab.id).state == FAILED  # only on disk: as is
    later = q2.submit(lambda ctx: None, client="a", request=_request("later"))
    assert later.seq > a3.seq  # numbering goes on after the stored jobs
    q2.stop()
    with sqlite3.connect(db) as conn:  # finished jobs keep no input images
        assert conn.execute("SELECT COUNT(*) FROM job_inputs").fetchone()[0] == 0
    gate.set()


def test_states_are_on_disk_as_they_change(tmp_path):
    db = tmp_path / "h.sqlite3"
    q = JobQueue(store=JobStore(db))
    job = q.submit(lambda ctx: 1 / 0, client="c", kind="txt2img", request=_request("x"))
    assert JobStore(db).get(job.id).state == QUEUED  # written before submit returned
    q.start()
    assert job.wait(5)
    stored = JobStore(db).get(job.id)
    assert (stored.state, stored.error_status) == (FAILED, 500) and "ZeroDivisionError" in stored.error
    assert stored.started_at is not None and stored.finished_at >= stored.started_at
    q.stop()


def test_graceful_stop_keeps_queued_jobs_for_the_next_start(tmp_path):
    db = tmp_path / "h.sqlite3"
    q = JobQueue(store=JobStore(db))  # never started: everything stays queued
    job = q.submit(lambda ctx: None, client="c", request=_request("x"))
    q.stop()
    assert job.state == CANCELLED and "queued again" in job.error
    q2 = JobQueue(store=JobStore(db))
    assert [j.id for j in q2.recover(lambda stored: lambda ctx: None)] == [job.id]
    q2.stop()


def test_concurrent_submits_never_pass_the_queue_caps(tmp_path):
    """The capacity check happens before the job is stored (a refused job leaves no row); submits
    storing at the same moment hold their slots, so eight at once from one client get exactly its share."""
    from concurrent.futures import ThreadPoolExecutor

    from sdstudio.runtime.queue import QueueFullError

    class SlowStore(JobStore):
        def add(self, job, request):
            time.sleep(0.2)  # a slow disk: every submit is between check and queue at once
            super().add(job, request)

    q = JobQueue(store=SlowStore(tmp_path / "h.sqlite3"), max_pending=3, max_pending_per_client=2)

    def submit(i: int) -> str:
        try:
            q.submit(lambda ctx: None, client="greedy", request=_request(f"p{i}"))
            return "queued"
        except QueueFullError as exc:
            return "share" if "this client's share" in str(exc) else "full"

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(submit, range(8)))
    assert outcomes.count("queued") == 2 and outcomes.count("share") == 6
    assert len(q.pending()) == 2
    other = q.submit(lambda ctx: None, client="polite", request=_request("x"))  # the third slot
    assert other.state == QUEUED
    with pytest.raises(QueueFullError, match="the queue is full"):  # 3 jobs: a fourth is refused
        q.submit(lambda ctx: None, client="third", request=_request("y"))
    q.stop()
