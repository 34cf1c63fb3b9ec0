"""Throughput of the Ray back end with 1 vs 2 model workers on the embedded tiny model, against the
in-process back end, all in the same run (same machine, same requests). Prints jobs/s and ratios.

    pip install 'sdstudio[ray]'
    python3 bench/ray_workers.py [--jobs 12] [--size 128] [--steps 20] [--cpus 2] [--address auto]

``--cpus`` is the local Ray cluster's CPU count; each of N workers gets cpus // N of them (and that
many torch threads), so 2 workers on 2 CPUs run one thread each.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault(
    "OMP_WAIT_POLICY", "PASSIVE"
)  # as the tests: spinning OMP threads starve the server threads


def run_jobs(client, body: dict, jobs: int) -> float:
    """Seconds for ``jobs`` jobs from two clients, submitted at once, until the last is done."""
    start = time.perf_counter()
    ids = [
        client.post(
            "/api/jobs/txt2img", json={**body, "seed": i}, headers={"X-Client-Id": f"c{i % 2}"}
        ).json()["id"]
        for i in range(jobs)
    ]
    for job_id in ids:
        while client.get(f"/api/jobs/{job_id}").json()["state"] not in ("done", "failed", "cancelled"):
            time.sleep(0.02)
    return time.perf_counter() - start


def measure(workers: str, n: int, body: dict, jobs: int) -> float:
    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app

    root = Path(tempfile.mkdtemp(prefix="sdstudio-bench-"))
    settings = ServerSettings(outdir=root / "out", models_dir=root / "models", workers=workers, ray_workers=n)
    with TestClient(create_app(settings)) as client:
        run_jobs(client, {**body, "steps": 1}, 2 * max(1, n))  # warm-up: every worker loads the model
        seconds = run_jobs(client, body, jobs)
    return jobs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--address", help="join this Ray cluster (auto or HOST:PORT) instead of a local one")
    args = parser.parse_args()

    import ray

    if args.address:
        ray.init(address=args.address, logging_level="WARNING", log_to_driver=False)
        args.cpus = int(ray.cluster_resources().get("CPU", 1))
    else:
        ray.init(num_cpus=args.cpus, logging_level="WARNING", log_to_driver=False, include_dashboard=False)
    body = {
        "prompt": "a cat",
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "sampler_name": "Euler",
    }
    local = measure("local", 0, body, args.jobs)
    one = measure("ray", 1, body, args.jobs)
    two = measure("ray", 2, body, args.jobs)
    print(f"{args.jobs} jobs of {args.size}x{args.size}, {args.steps} steps, {args.cpus} CPUs (jobs/s):")
    print(f"  in-process      {local:.3f}")
    print(f"  ray, 1 worker   {one:.3f}   ({one / local:.2f}x in-process)")
    print(f"  ray, 2 workers  {two:.3f}   ({two / one:.2f}x one worker)")
    ray.shutdown()


if __name__ == "__main__":
    main()
