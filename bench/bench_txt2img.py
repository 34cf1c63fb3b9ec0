"""Benchmark: sdstudio txt2img vs diffusers' StableDiffusionPipeline on the same model, same run.

Builds the full-size SD 1.5 architecture (random weights, shipped config; no download), then times
one 256x256 image with 10 LMS steps (CFG, batch 2 through the UNet) in fp32 and bf16 with both
implementations, interleaved, and prints seconds and ratios. Timings on a noisy machine are only
meaningful as ratios measured in the same run.

    python3 bench/bench_txt2img.py [--size 256] [--steps 10] [--repeats 2] [--arch sd1|tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch


def build_sd15():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdstudio.families.sd.architectures import ARCHITECTURES, component_config
    from sdstudio.families.sd.tokenizer import clip_tokenizer
    from sdstudio.models.sdmodel import StableDiffusionModel

    arch = ARCHITECTURES["sd1"]
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(component_config(arch, "unet"))
    vae = AutoencoderKL.from_config(component_config(arch, "vae"))
    text = CLIPTextModel(CLIPTextConfig(**component_config(arch, "text_encoder")))
    sched = component_config(arch, "scheduler")
    return StableDiffusionModel("sd15-random", "sd1", unet, vae, [text], [clip_tokenizer()], sched).eval()


def build_tiny():
    from sdstudio.models.tiny import tiny_sd1

    return tiny_sd1()


def diffusers_pipe(model):
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    scheduler = LMSDiscreteScheduler.from_config(dict(model.scheduler_config, timestep_spacing="linspace"))
    return StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoders[0], tokenizer=model.tokenizers[0], unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def time_it(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--arch", default="sd1", choices=["sd1", "tiny"])
    args = parser.parse_args()

    from sdstudio import GenerationRequest, txt2img

    model = build_sd15() if args.arch == "sd1" else build_tiny()
    request = GenerationRequest(prompt="a cute fluffy cat plays trumpet", width=args.size, height=args.size,
                                steps=args.steps, sampler_name="LMS", seed=1, cfg_scale=7.5)
    results: dict[str, list[float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        model.to(dtype=dtype)
        pipe = diffusers_pipe(model)
        label = "fp32" if dtype == torch.float32 else "bf16"
        for _ in range(args.repeats):
            results.setdefault(f"sdstudio {label}", []).append(time_it(lambda: txt2img(model, request)))
            results.setdefault(f"diffusers {label}", []).append(time_it(lambda pipe=pipe: pipe(
                request.prompt, height=args.size, width=args.size, num_inference_steps=args.steps,
                guidance_scale=7.5, generator=torch.Generator("cpu").manual_seed(1))))
    best = {k: min(v) for k, v in results.items()}
    for key, value in best.items():
        print(f"{key:16s} {value:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in results[key])})")
    base = best["diffusers fp32"]
    print("ratios vs diffusers fp32 (lower is faster):")
    for key, value in best.items():
        print(f"  {key:16s} {value / base:5.2f}x")
    print(json.dumps({"size": args.size, "steps": args.steps, "arch": args.arch, "best_seconds": best}))


if __name__ == "__main__":
    main()
