"""Fast mode with and without token downsampling (ToDo) at 512 px on the random SD 1.5: time and distance.

    python3 bench/todo_cost.py [--size 512] [--seeds 2] [--steps 20]

One process, the suite's random SD 1.5 (``bench/suite.py`` builds it), the default backend: per
seed, the default path, ``--fast`` as shipped (ToDo from 4096 tokens) and ``--fast`` with ToDo off.
Prints seconds per image and the pixel distance (mean absolute 0-255 levels, PSNR) of each fast
variant to the default path and of ToDo to fast-without-ToDo. Random weights make these
perturbation sizes, not image quality: the embedded model (whose quality bench/quality_steps.py
measures) has no attention at full resolution, so ToDo never runs on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from suite import cache_dir, ensure_model

PROMPT = "a cute fluffy cat plays trumpet"


def distance(a: np.ndarray, b: np.ndarray) -> str:
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    mse = float((diff**2).mean())
    psnr = 10 * np.log10(255**2 / mse) if mse else float("inf")
    return f"mean {diff.mean():5.2f} levels, PSNR {psnr:5.1f} dB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()

    from sdstudio import GenerationRequest, load_model, txt2img
    from sdstudio.pipelines import speed

    single, _ = ensure_model(cache_dir())
    model = load_model(single, tiny_vae_path=single.parent / "sd15-random-taesd")
    base = GenerationRequest(prompt=PROMPT, width=args.size, height=args.size, steps=args.steps,
                             sampler_name="DPM++ 2M", cfg_scale=7.0)  # fmt: skip
    shipped = speed.TODO_MIN_TOKENS

    def run(seed: int, fast: bool, todo: bool) -> tuple[np.ndarray, float]:
        speed.TODO_MIN_TOKENS = shipped if todo else 10**9
        try:
            t = time.perf_counter()
            image = np.asarray(txt2img(model, base.replace(seed=seed, fast=fast))[0].image)
            return image, time.perf_counter() - t
        finally:
            speed.TODO_MIN_TOKENS = shipped

    for fast in (False, True):  # warm-up: builds/compiles every graph before timing
        run(0, fast, True)
    run(0, True, False)
    for seed in range(1, args.seeds + 1):
        default, t_default = run(seed, False, True)
        todo, t_todo = run(seed, True, True)
        plain, t_plain = run(seed, True, False)
        print(f"seed {seed}: default {t_default:6.2f} s | fast {t_todo:6.2f} s ({t_default / t_todo:.2f}x) | "
              f"fast without ToDo {t_plain:6.2f} s ({t_default / t_plain:.2f}x)", flush=True)  # fmt: skip
        print(f"  fast vs default:              {distance(todo, default)}")
        print(f"  fast without ToDo vs default: {distance(plain, default)}")
        print(f"  fast vs fast without ToDo:    {distance(todo, plain)}", flush=True)


if __name__ == "__main__":
    main()
