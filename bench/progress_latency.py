"""Latency of GET /sdapi/v1/progress while a job runs, on a real server (`sdstudio serve`, embedded model).

Starts the server in a subprocess, posts one long txt2img job (64x64, many steps, batch 8) from a
thread, polls /progress every ``--interval`` seconds with and without ``skip_current_image``, and
prints p50 / p95 / max in milliseconds.

    python3 bench/progress_latency.py [--polls 100] [--interval 0.05]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from sdstudio.cli import main; sys.exit(main())"  # what the `sdstudio` script runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    port: int, method: str, path: str, body: dict | None = None, timeout: float = 600
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    data = json.dumps(body).encode() if body is not None else None
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def wait_ready(port: int, proc: subprocess.Popen, limit: float = 300) -> None:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        try:
            if request(port, "GET", "/sdapi/v1/progress", timeout=5)[0] == 200:
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=100, help="polls per variant")
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()

    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", CLI, "serve", "--port", str(port), "--outdir", out]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(port, proc)
            body = {"prompt": "cat face", "width": 64, "height": 64, "steps": args.steps, "batch_size": 8,
                    "n_iter": 4, "sampler_name": "DPM++ 2M", "seed": 1}  # fmt: skip
            job = threading.Thread(
                target=request, args=(port, "POST", "/sdapi/v1/txt2img", body), daemon=True
            )
            job.start()
            while json.loads(request(port, "GET", "/sdapi/v1/progress")[1])["state"]["sampling_step"] < 1:
                time.sleep(0.1)  # the job is sampling
            results = {}
            for label, path in (("with preview", "/sdapi/v1/progress"),
                                ("skip_current_image", "/sdapi/v1/progress?skip_current_image=true")):  # fmt: skip
                times = []
                for _ in range(args.polls):
                    t = time.perf_counter()
                    status, _ = request(port, "GET", path)
                    times.append((time.perf_counter() - t) * 1000)
                    assert status == 200
                    time.sleep(args.interval)
                results[label] = times
            running = job.is_alive()
            request(port, "POST", "/sdapi/v1/interrupt")
        finally:
            proc.terminate()
            proc.wait(30)
    print(
        f"GET /sdapi/v1/progress while a job runs ({args.polls} polls each; job still running at the end: {running})"
    )
    for label, times in results.items():
        print(f"  {label:20s} p50 {statistics.median(times):6.1f} ms   p95 {percentile(times, 0.95):6.1f} ms"
              f"   max {max(times):6.1f} ms")  # fmt: skip
    print(json.dumps({k: {"p50": statistics.median(v), "p95": percentile(v, 0.95), "max": max(v)}
                      for k, v in results.items()}))  # fmt: skip


if __name__ == "__main__":
    main()
