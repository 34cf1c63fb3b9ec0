"""Server overhead: one txt2img through /sdapi/v1/txt2img (queue, save, history, base64) vs a direct
pipeline call on the same tiny model, in the same run. Prints the ratio (API / direct).

    python3 bench/server_overhead.py [--runs 10] [--size 64] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()

    from fastapi.testclient import TestClient

    from sdstudio.api import ServerSettings, create_app
    from sdstudio.config import GenerationRequest
    from sdstudio.models.tiny import tiny_sd1
    from sdstudio.pipelines import txt2img

    model = tiny_sd1()
    body = {
        "prompt": "a cat",
        "width": args.size,
        "height": args.size,
        "steps": args.steps,
        "sampler_name": "Euler",
    }
    request = GenerationRequest(**body, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(ServerSettings(outdir=tmp, models_dir=None), models={"tiny": model})
        with TestClient(app) as client:
            txt2img(model, request)  # warm-up both paths
            client.post("/sdapi/v1/txt2img", json={**body, "seed": 1})
            direct, api = [], []
            for i in range(args.runs):  # interleaved so drift hits both equally
                t = time.perf_counter()
                txt2img(model, request.replace(seed=i))
                direct.append(time.perf_counter() - t)
                t = time.perf_counter()
                r = client.post("/sdapi/v1/txt2img", json={**body, "seed": i})
                api.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
    d, a = statistics.median(direct), statistics.median(api)
    print(f"tiny-sd1 {args.size}px {args.steps} steps, {args.runs} runs (medians)")
    print(f"direct pipeline : {d * 1000:8.1f} ms")
    print(f"/sdapi/v1 route : {a * 1000:8.1f} ms   (queue + save PNG + SQLite row + base64)")
    print(f"ratio api/direct: {a / d:8.2f}x   overhead {1000 * (a - d):.1f} ms per job")


if __name__ == "__main__":
    main()
