"""X/Y/Z plot cost: a 3x3 grid (Seed 1-3 x CFG Scale 3,5,7) on the embedded default model vs the
9 single images it contains, generated one by one with the model already loaded. Interleaved
repeats in one run; prints both times and the ratio (grid / 9 singles; <= 1 means no overhead).

    python3 bench/bench_xyz.py [--repeats 3] [--steps 10] [--sampler "DPM++ 2M"]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--sampler", default="DPM++ 2M")
    args = parser.parse_args()

    from sdstudio.config import GenerationRequest
    from sdstudio.models.loader import load_model
    from sdstudio.pipelines import txt2img
    from sdstudio.pipelines.scripts import registry

    model = load_model(None)
    base = GenerationRequest(
        prompt="cat face", width=64, height=64, steps=args.steps, sampler_name=args.sampler, seed=1
    )
    xyz_args = [1, "1-3", [], 6, "3,5,7", [], 0, "", [], True, True]

    def singles() -> None:
        for cfg in (3.0, 5.0, 7.0):
            for seed in (1, 2, 3):
                txt2img(model, base.replace(seed=seed, cfg_scale=cfg))

    def grid() -> None:
        registry.run_api_script("x/y/z plot", xyz_args, base, lambda r, **kw: txt2img(model, r))

    singles()  # warm-up
    times: dict[str, list[float]] = {"9 singles": [], "3x3 grid": []}
    for _ in range(args.repeats):
        for name, fn in (("9 singles", singles), ("3x3 grid", grid)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:>10}: best {v:.2f} s of {args.repeats}")
    print(f"ratio grid / singles: {best['3x3 grid'] / best['9 singles']:.2f}")


if __name__ == "__main__":
    main()
