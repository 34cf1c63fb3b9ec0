"""The worker interface without Ray: the default back end, the serve flags, the slot plan."""

from __future__ import annotations

import threading
import time

import pytest

from sdstudio.cli import build_parser, main
from sdstudio.cli.serve import build_settings
from sdstudio.errors import SDStudioError
from sdstudio.runtime.queue import JobQueue
from sdstudio.runtime.ray_workers import slot_plan
from sdstudio.runtime.workers import LocalWorker


def test_default_server_runs_models_in_process(studio_app):
    studio = studio_app.state.studio
    assert [type(w) for w in studio.workers] == [LocalWorker] and studio.queue.workers == studio.workers


def test_serve_worker_flags(capsys):
    parse = build_parser().parse_args
    s = build_settings(parse(["serve", "--workers", "ray", "--ray-address", "auto", "--ray-workers", "3"]))
    assert (s.workers, s.ray_address, s.ray_workers) == ("ray", "auto", 3)
    assert build_settings(parse(["serve"])).workers == "local"
    with pytest.raises(SDStudioError, match="need --workers ray"):
        build_settings(parse(["serve", "--ray-address", "auto"]))
    assert main(["serve", "--workers", "ray", "--ray-workers", "-1"]) == 2
    assert "--ray-workers" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("resources", "requested", "device", "expected"),
    [
        ({"CPU": 2.0}, 2, "cpu", (2, {"num_cpus": 1}, "cpu", 1)),  # two workers share two CPUs
        ({"CPU": 16.0}, 0, "cpu", (1, {"num_cpus": 16}, "cpu", 16)),  # default: one CPU worker
        ({"CPU": 16.0, "GPU": 4.0}, 0, "cuda", (4, {"num_gpus": 1, "num_cpus": 1}, "cuda", 0)),  # one per GPU
        ({"CPU": 16.0, "GPU": 4.0}, 0, "cpu", (1, {"num_cpus": 16}, "cpu", 16)),  # --device cpu ignores GPUs
        ({"CPU": 5.0}, 2, "cpu", (2, {"num_cpus": 2}, "cpu", 2)),
    ],
)
def test_slot_plan(resources, requested, device, expected):
    assert slot_plan(resources, requested, device) == expected


def test_slot_plan_refuses_more_cpu_workers_than_cpus():
    with pytest.raises(SDStudioError, match="only 3 CPUs"):
        slot_plan({"CPU": 3.0}, 4, "cpu")


class _FakeWorker:
    """A worker slot that holds one model (what the queue reads) and records what it ran."""

    def __init__(self, name: str, key: str | None) -> None:
        self.name, self.model_key = name, key


def test_next_job_goes_to_an_idle_worker_that_holds_its_model():
    workers = [_FakeWorker("w0", "model-a"), _FakeWorker("w1", "model-b"), _FakeWorker("w2", None)]
    q = JobQueue(workers=workers)
    gate = threading.Event()
    try:
        jobs = [
            q.submit(lambda ctx: gate.wait(5), client="x", meta={"model_key": "model-b"}),
            q.submit(lambda ctx: gate.wait(5), client="y", meta={"model_key": "model-c"}),  # nobody holds it
            q.submit(
                lambda ctx: gate.wait(5), client="z", meta={"model_key": "model-b"}
            ),  # its holder is busy
        ]
        q.start()
        deadline = time.time() + 5
        while len(q.running_jobs()) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert [j.worker for j in jobs] == ["w1", "w2", "w0"]  # holder, then an empty one, then any
        assert len(q.running_jobs()) == 3 and q.running is jobs[0]
    finally:
        gate.set()
        q.stop()
