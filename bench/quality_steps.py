"""Quality per step on the embedded model, and the quality cost of fast mode.

For each sampler: images at N steps vs a 200-step reference of the same sampler at the same
seeds, scored by the embedded model's own mini-CLIP image features (cosine, 1 = same) and pixel
MSE (images in [0, 1]). The fewest steps within the tolerance is reported per sampler. Then fast
mode's techniques, one by one and together, vs the default path at the default steps.

    python3 bench/quality_steps.py [--seeds 4] [--json out.json]

Tolerance (stated, not tuned per sampler): mean cosine >= 0.98 and mean MSE <= 0.003.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

PROMPTS = ("cat face", "red apple")
SAMPLERS = ("DPM++ 2M", "Euler", "Euler a", "UniPC", "DDIM")
STEPS = (4, 6, 8, 10, 12, 15, 20, 30)
REFERENCE_STEPS = 200
COS_TOL, MSE_TOL = 0.98, 0.003


def generate(model, sampler: str, steps: int, seeds: int, **extra) -> np.ndarray:
    """(N, H, W, 3) float images in [0, 1] for every prompt x seed."""
    from sdstudio import GenerationRequest, txt2img
    from sdstudio.config import Limits

    out = []
    for prompt in PROMPTS:
        req = GenerationRequest(prompt=prompt, width=64, height=64, steps=steps, sampler_name=sampler,
                                seed=1000, batch_size=seeds, cfg_scale=7.0, **extra)  # fmt: skip
        out += [
            np.asarray(item.image, dtype=np.float32) / 255
            for item in txt2img(model, req, limits=Limits(max_steps=REFERENCE_STEPS))
        ]
    return np.stack(out)


class Scorer:
    """mini-CLIP image features of the embedded model (``assets/default-model/miniclip``)."""

    def __init__(self) -> None:
        from sdstudio.models.loader import DEFAULT_MODEL_DIR
        from sdstudio.training.miniclip import load_miniclip

        self.clip = load_miniclip(DEFAULT_MODEL_DIR / "miniclip", DEFAULT_MODEL_DIR / "text_encoder")

    @torch.no_grad()
    def features(self, images: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # (N, 3, H, W) in [-1, 1]
        return self.clip.encode_image(pixels)  # (N, E) unit norm

    def distance(self, images: np.ndarray, reference: np.ndarray) -> dict[str, float]:
        cos = (self.features(images) * self.features(reference)).sum(-1)
        return {"cosine": float(cos.mean()), "cosine_min": float(cos.min()),
                "mse": float(((images - reference) ** 2).mean())}  # fmt: skip


def within(d: dict[str, float]) -> bool:
    return d["cosine"] >= COS_TOL and d["mse"] <= MSE_TOL


def per_step(model, scorer: Scorer, seeds: int, samplers=SAMPLERS, steps=STEPS) -> dict:
    table = {}
    for sampler in samplers:
        ref = generate(model, sampler, REFERENCE_STEPS, seeds)
        rows = {n: scorer.distance(generate(model, sampler, n, seeds), ref) for n in steps}
        fewest = next(
            (n for n in steps if within(rows[n]) and all(within(rows[m]) for m in steps if m > n)), None
        )
        table[sampler] = {"rows": rows, "fewest_steps": fewest}
        print(f"{sampler:10s} " + " ".join(f"{n}:{r['cosine']:.3f}/{r['mse']:.4f}" for n, r in rows.items())
              + f"  -> fewest within tolerance: {fewest}", flush=True)  # fmt: skip
    return table


FAST_VARIANTS = {
    "NGMS 1.0 (A1111, alternate calls)": {"s_min_uncond": 1.0},
    "fast (DeepCache 3 + tiny VAE + int8 UNet)": {"fast": True},
    "fast without int8 (DeepCache 3 + tiny VAE)": {"fast": True, "_int8": False},
    "int8 UNet alone": {"fast": True, "_i": 1, "_s": 0.0, "_tiny": False},
    "DeepCache 3 + NGMS 1.0 (fast + s_min_uncond 1)": {"fast": True, "s_min_uncond": 1.0},
}
# ToMe (token_merging_ratio): the embedded model has no attention at full resolution (DownBlock2D /
# UpBlock2D there), so at tomesd's max_downsample 1 it is a no-op; "_down" 2 merges the 8x8 level.
TOME_VARIANTS = {
    "ToMe 0.5 (max_downsample 1: no-op here)": {"token_merging_ratio": 0.5},
    "ToMe 0.3, max_downsample 2 (8x8 level)": {"token_merging_ratio": 0.3, "_down": 2},
    "ToMe 0.5, max_downsample 2 (8x8 level)": {"token_merging_ratio": 0.5, "_down": 2},
    "fast + ToMe 0.5, max_downsample 2": {"fast": True, "token_merging_ratio": 0.5, "_down": 2},
}


def fast_cost(model, scorer: Scorer, seeds: int, sampler: str, steps: int, grid: bool = True) -> dict:
    """Fast-mode variants vs the default path (same seeds, sampler, steps), with seconds per batch."""
    from sdstudio.pipelines import speed

    t = time.perf_counter()
    base = generate(model, sampler, steps, seeds)
    base_s = time.perf_counter() - t
    out = {"default": {"seconds": base_s}}
    variants = dict(FAST_VARIANTS)
    if grid:
        for sigma in (0.5, 1.0, 2.0):
            variants[f"NGMS all steps {sigma}"] = {"fast": True, "_i": 1, "_s": sigma}
        for interval in (2, 3, 5):
            variants[f"DeepCache {interval}"] = {"fast": True, "_i": interval, "_s": 0.0}
    variants["DeepCache 2 + NGMS 1.0"] = {"fast": True, "_i": 2, "_s": 1.0, "_all": False}
    variants.update(TOME_VARIANTS)
    for name, kw in variants.items():
        kw = dict(kw)
        interval, sigma, every = kw.pop("_i", None), kw.pop("_s", None), kw.pop("_all", True)
        saved = (speed.FAST_DEEPCACHE_INTERVAL, speed.FAST_MIN_UNCOND_SIGMA, speed.FAST_UNCOND_EVERY_STEP,
                 speed.TOME_MAX_DOWNSAMPLE, speed.FAST_INT8, speed.FAST_TINY_VAE)  # fmt: skip
        speed.FAST_INT8 = kw.pop("_int8", speed.FAST_INT8)
        speed.FAST_TINY_VAE = kw.pop("_tiny", speed.FAST_TINY_VAE)
        if interval is not None:  # the bench varies the module constants; the request stays {"fast": True}
            speed.FAST_DEEPCACHE_INTERVAL, speed.FAST_MIN_UNCOND_SIGMA = interval, sigma
            speed.FAST_UNCOND_EVERY_STEP = every
        speed.TOME_MAX_DOWNSAMPLE = kw.pop("_down", speed.TOME_MAX_DOWNSAMPLE)
        try:
            t = time.perf_counter()
            images = generate(model, sampler, steps, seeds, **kw)
            seconds = time.perf_counter() - t
        finally:
            (speed.FAST_DEEPCACHE_INTERVAL, speed.FAST_MIN_UNCOND_SIGMA, speed.FAST_UNCOND_EVERY_STEP,
             speed.TOME_MAX_DOWNSAMPLE, speed.FAST_INT8, speed.FAST_TINY_VAE) = saved  # fmt: skip
        out[name] = {**scorer.distance(images, base), "seconds": seconds, "speedup": base_s / seconds}
        r = out[name]
        print(f"{name:40s} cos {r['cosine']:.4f} (min {r['cosine_min']:.4f}) mse {r['mse']:.5f} "
              f"{r['speedup']:.2f}x", flush=True)  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4, help="images per prompt")
    parser.add_argument("--json", default=None)
    parser.add_argument("--skip-steps", action="store_true", help="only the fast-mode cost")
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--steps-list", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--no-grid", action="store_true", help="fast-mode cost: only the shipped variants")
    args = parser.parse_args()

    from sdstudio import load_model

    model, scorer = load_model(None), Scorer()
    print(f"embedded model on the {model.backend} backend", flush=True)
    result = {"tolerance": {"cosine": COS_TOL, "mse": MSE_TOL}, "prompts": PROMPTS, "seeds": args.seeds}
    if not args.skip_steps:
        result["per_step"] = per_step(model, scorer, args.seeds, args.samplers, args.steps_list)
    result["fast"] = fast_cost(model, scorer, args.seeds, args.sampler, args.steps, grid=not args.no_grid)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
