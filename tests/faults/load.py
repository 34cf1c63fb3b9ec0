"""A bounded load run: N clients against a live uvicorn server for a fixed time (tests and bench)."""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

FAST = {"width": 64, "height": 64, "steps": 2, "sampler_name": "Euler"}


@dataclass
class LoadReport:
    requests: int = 0
    status: dict[int, int] = field(default_factory=dict)
    latency: dict[str, list[float]] = field(default_factory=dict)  # route -> seconds
    accepted: list[str] = field(default_factory=list)
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, rss bytes, open fds)

    def p(self, route: str, q: float) -> float:
        values = sorted(self.latency.get(route, [0.0]))
        return values[min(len(values) - 1, int(q * len(values)))]

    def summary(self) -> str:
        lines = [f"{self.requests} requests, status counts {dict(sorted(self.status.items()))}"]
        for route in sorted(self.latency):
            v = self.latency[route]
            lines.append(
                f"{route}: n={len(v)} p50={statistics.median(v) * 1000:.1f} ms p95={self.p(route, 0.95) * 1000:.1f} ms"
            )
        return "\n".join(lines)


def process_sample() -> tuple[float, int, int]:
    rss = int(
        next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS")).split()[
            1
        ]
    )
    return time.time(), rss * 1024, len(os.listdir("/proc/self/fd"))


def run_load(
    url: str, seconds: float, clients: int = 8, seed: int = 0, submit_share: float = 0.3
) -> LoadReport:
    """Each client loops: submit a job (sometimes), poll progress, read history and the job list."""
    import httpx

    report = LoadReport()
    lock = threading.Lock()
    stop = time.time() + seconds

    def record(route: str, started: float, status: int) -> None:
        with lock:
            report.requests += 1
            report.status[status] = report.status.get(status, 0) + 1
            report.latency.setdefault(route, []).append(time.perf_counter() - started)

    def client(i: int) -> None:
        rng = random.Random(seed * 100 + i)
        with httpx.Client(base_url=url, timeout=120, headers={"X-Client-Id": f"load-{i}"}) as http:
            while time.time() < stop:
                if rng.random() < submit_share:
                    t = time.perf_counter()
                    r = http.post(
                        "/api/jobs/txt2img", json={**FAST, "seed": rng.randrange(1000), "prompt": f"c{i}"}
                    )
                    record("POST /api/jobs/txt2img", t, r.status_code)
                    if r.status_code == 202:
                        with lock:
                            report.accepted.append(r.json()["id"])
                for route in ("/sdapi/v1/progress", "/api/history?limit=24", "/api/jobs?limit=20"):
                    t = time.perf_counter()
                    r = http.get(route)
                    record("GET " + route.split("?")[0], t, r.status_code)
                time.sleep(rng.uniform(0.0, 0.05))

    def sampler() -> None:
        while time.time() < stop:
            report.samples.append(process_sample())
            time.sleep(0.5)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    threads.append(threading.Thread(target=sampler))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return report
