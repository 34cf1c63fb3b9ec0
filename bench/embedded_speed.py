"""The embedded model's speed: latency of one 64x64 image (20 steps DPM++ 2M, CFG 7) and images/s
at batch 8, default and fast mode (and fast mode decoding with the full VAE, i.e. without the
shipped tiny VAE), medians of alternating repeats in one process.

    python3 bench/embedded_speed.py [--repeats 5] [--json -]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["auto"], choices=["auto", "torch", "openvino"],
                        help="each backend's modes run alternating in this process")  # fmt: skip
    parser.add_argument("--json", default=None, help="'-' prints one JSON line last")
    args = parser.parse_args()

    from sdstudio import GenerationRequest, load_model, txt2img

    base = GenerationRequest(prompt="cat face", width=64, height=64, steps=20, sampler_name="DPM++ 2M",
                             cfg_scale=7.0, seed=1)  # fmt: skip
    modes, load = {}, {}
    for backend in args.backends:
        t = time.perf_counter()
        model = load_model(None, backend=backend)
        load[backend] = time.perf_counter() - t
        no_tiny = load_model(None, backend=backend)
        no_tiny.tiny_vae = None
        tag = "" if len(args.backends) == 1 else f" [{model.backend}]"
        modes[f"default{tag}"] = (model, base)
        modes[f"fast{tag}"] = (model, base.replace(fast=True))
        modes[f"fast-fullvae{tag}"] = (no_tiny, base.replace(fast=True))
    times: dict[str, dict[str, list[float]]] = {m: {"one": [], "batch8": []} for m in modes}
    for m, req in modes.values():  # warm-up at both batch sizes
        txt2img(m, req)
        txt2img(m, req.replace(batch_size=8))
    for i in range(args.repeats):
        for mode, (m, req) in modes.items():
            t = time.perf_counter()
            txt2img(m, req.replace(seed=i))
            times[mode]["one"].append(time.perf_counter() - t)
            t = time.perf_counter()
            txt2img(m, req.replace(seed=i, batch_size=8))
            times[mode]["batch8"].append(time.perf_counter() - t)
    out = {"load": load, "repeats": args.repeats, "modes": {}}
    for mode, t8 in times.items():
        one, b8 = statistics.median(t8["one"]), statistics.median(t8["batch8"])
        out["modes"][mode] = {"latency": one, "batch8_images_per_s": 8 / b8}
        print(f"{mode:22s} one image {one:.3f} s   batch 8: {8 / b8:.1f} images/s")
    if args.json == "-":
        print(json.dumps(out))
    elif args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
