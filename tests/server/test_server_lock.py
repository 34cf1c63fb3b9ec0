"""Two servers on one outputs folder: a starting server leaves a live server's jobs alone, and
recovers them once that server is gone (kill -9 included)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from sdstudio.config import GenerationRequest
from sdstudio.runtime.jobstore import JobStore
from sdstudio.runtime.queue import QUEUED, RUNNING, JobQueue
from sdstudio.runtime.server_lock import ServerLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX record locks")

HOLDER = (
    "import sys, time\n"
    "from sdstudio.runtime.server_lock import ServerLock\n"
    "lock = ServerLock(sys.argv[1])\n"
    "print('sole' if lock.acquire() else 'shared', flush=True)\n"
    "lock.share()\n"
    "time.sleep(120)\n"
)


def _live_server(db) -> subprocess.Popen:
    """Another process holding the lock as a running server does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "sole"
    return proc


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_the_lock_tells_a_second_server_and_dies_with_its_holder(tmp_path):
    db = tmp_path / "history.sqlite3"
    other = _live_server(db)
    try:
        lock = ServerLock(db)
        assert lock.acquire() is False  # shared beside the live one
        lock.release()
    finally:
        _stop(other)  # kill -9: the kernel drops its lock
    lock = ServerLock(db)
    assert lock.acquire() is True
    lock.share()
    second = ServerLock(db)
    assert second.acquire() is True  # the same process never excludes itself
    lock.release()
    second.release()


def test_a_second_server_does_not_fail_or_rerun_a_live_servers_jobs(tmp_path, tiny_sd1):
    from sdstudio.api import ServerSettings, create_app

    out = tmp_path / "out"
    db = out / "history.sqlite3"
    other = _live_server(db)
    gate, started = threading.Event(), threading.Event()
    queue = JobQueue(store=JobStore(db))  # the live server's queue: one job running, one waiting
    queue.start()
    running = queue.submit(lambda ctx: (started.set(), gate.wait(30)), client="a", kind="txt2img",
                           request=GenerationRequest(prompt="running", seed=1, steps=2))  # fmt: skip
    assert started.wait(10)
    waiting = queue.submit(lambda ctx: None, client="a", kind="txt2img",
                           request=GenerationRequest(prompt="waiting", seed=2, steps=2))  # fmt: skip
    try:
        app = create_app(ServerSettings(outdir=out, models_dir=None), models={"tiny": tiny_sd1})
        studio = app.state.studio
        assert studio.sole_server is False and studio.recovered == []
        stored = JobStore(db)
        assert (stored.get(running.id).state, stored.get(waiting.id).state) == (RUNNING, QUEUED)
        studio.stop()
    finally:
        _stop(other)
        gate.set()
        queue.stop()
    # with no live server left, the next start recovers as after a crash
    app = create_app(ServerSettings(outdir=out, models_dir=None), models={"tiny": tiny_sd1})
    studio = app.state.studio
    assert studio.sole_server is True and [j.id for j in studio.recovered] == [waiting.id]
    studio.stop()


def test_where_locks_are_unsupported_a_server_starts_as_the_only_one(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, kind):
        raise OSError(errno.ENOLCK, "No locks available")  # NFS without a lock daemon

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    lock = ServerLock(tmp_path / "history.sqlite3")
    assert lock.acquire() is True
    lock.release()
