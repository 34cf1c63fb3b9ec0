"""Tiny VAE (TAESD) decode vs the full VAE: speed on an SD 1.5-shaped VAE, quality on the embedded model.

Speed: a random-weight ``AutoencoderKL`` from the shipped SD 1.5 VAE config against a random-init
``AutoencoderTiny`` of madebyollin's TAESD size (64 channels, 4 stages), one latent per decode at
each size, fp32, alternating, medians of the repeats; wall and CPU (process_time) seconds. Also
the embedded model's VAE against its shipped tiny VAE at 64 px, batch 8.

Quality (``--quality``): the embedded model's shipped tiny VAE against its full VAE on held-out
latents (16 prompts that are not in the model card, seeds 1000+, DPM++ 2M 15 steps, CFG 5), both
rounded to 8-bit as saved: pixel MSE, PSNR, mean/max abs error, mini-CLIP image cosine.

    python3 bench/tiny_vae.py [--sizes 256 512] [--repeats 3] [--quality] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

HELDOUT_PROMPTS = (
    "dog face", "star", "sun with face", "crescent moon", "green apple", "ghost", "alien", "fire",
    "banana", "tiger face", "snowman", "umbrella", "guitar", "crying face", "blue heart", "flag of France",
)  # fmt: skip


def timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def race(contenders: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median wall/CPU seconds per contender, called alternately (one warm-up call each)."""
    for fn in contenders.values():
        fn()
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for i in range(repeats):
        order = list(contenders) if i % 2 == 0 else list(reversed(contenders))
        for name in order:
            runs[name].append(timed(contenders[name]))
    return {
        name: {"wall": statistics.median(r[0] for r in rs), "cpu": statistics.median(r[1] for r in rs)}
        for name, rs in runs.items()
    }


@torch.no_grad()
def sd15_speed(sizes: list[int], repeats: int) -> dict[int, dict]:
    from diffusers import AutoencoderKL

    from sdstudio.families.sd.architectures import ARCHITECTURES, component_config
    from sdstudio.models.tiny_vae import build_tiny_vae, tiny_decode

    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(component_config(ARCHITECTURES["sd1"], "vae")).eval()
    tiny = build_tiny_vae(4, 8, channels=64).eval()
    out = {}
    for size in sizes:
        z = torch.randn(1, 4, size // 8, size // 8)
        out[size] = race(
            {"full": lambda z=z: vae.decode(z / 0.18215), "tiny": lambda z=z: tiny_decode(tiny, z)}, repeats
        )
        print_row(f"SD 1.5 VAE, {size} px", out[size])
    return out


@torch.no_grad()
def embedded_speed(repeats: int) -> dict:
    from sdstudio import load_model
    from sdstudio.pipelines.components import decode_latents, decode_latents_tiny

    model = load_model(None, dtype=torch.float32)
    z = torch.randn(8, 4, 16, 16)
    row = race(
        {"full": lambda: decode_latents(model, z), "tiny": lambda: decode_latents_tiny(model, z)}, repeats
    )
    print_row("embedded, 64 px, batch 8", row)
    return row


def print_row(label: str, row: dict) -> None:
    f, t = row["full"], row["tiny"]
    print(
        f"{label:28s} full {f['wall']:.3f} s (CPU {f['cpu']:.3f})   tiny {t['wall']:.3f} s "
        f"(CPU {t['cpu']:.3f})   {f['wall'] / t['wall']:.1f}x",
        flush=True,
    )


def quality() -> dict:
    from sdstudio import load_model
    from sdstudio.models.loader import DEFAULT_MODEL_DIR
    from sdstudio.training.miniclip import load_miniclip
    from sdstudio.training.taesd import reconstruction_quality, sampled_latents

    model = load_model(None, dtype=torch.float32)
    latents = sampled_latents(model, HELDOUT_PROMPTS, 1000, steps=15, cfg_scale=5.0)
    scorer = load_miniclip(DEFAULT_MODEL_DIR / "miniclip", DEFAULT_MODEL_DIR / "text_encoder").eval()
    q = reconstruction_quality(model, latents, scorer)
    print(
        "embedded tiny VAE vs full VAE on held-out latents: "
        + ", ".join(f"{k} {v:.4g}" for k, v in q.items())
    )
    return q


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report = {"threads": torch.get_num_threads(), "sd15": sd15_speed(args.sizes, args.repeats)}
    report["embedded"] = embedded_speed(args.repeats)
    if args.quality:
        report["quality"] = quality()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
