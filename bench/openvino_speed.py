"""``--backend openvino`` vs PyTorch in ONE process on the same model object, alternating, medians.

For each model: one UNet call (batch 2, CFG), one VAE decode, and a whole txt2img image, with the
OpenVINO parts switched in and out between repeats (``model.compiled_unet`` / ``compiled_decoder``),
wall and CPU seconds. Also the pixel difference of the two images (same seed).

    python3 bench/openvino_speed.py                       # embedded model (64 px, 20 steps) + random SD 1.5 (256 px, 20 steps)
    python3 bench/openvino_speed.py --models embedded --repeats 5
    python3 bench/openvino_speed.py --models sd15 --size 512 --steps 20 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def timed(fn) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def compare(model, size: int, steps: int, repeats: int, image: bool = True) -> dict:
    """Alternate PyTorch / OpenVINO for a UNet call, a VAE decode and one image; medians."""
    import numpy as np
    import torch

    from sdstudio import GenerationRequest, txt2img

    parts = (model.compiled_unet, model.compiled_decoder)
    f = model.vae_scale_factor
    dtype = model.dtype  # bf16 where --precision auto picks it
    x = torch.randn(2, model.unet.config.in_channels, size // f, size // f, dtype=dtype)  # (2, C, h, w)
    ctx = torch.randn(2, 77, model.unet.config.cross_attention_dim, dtype=dtype)
    t = torch.tensor([500.0, 500.0])
    z = torch.randn(1, model.latent_channels, size // f, size // f)
    request = GenerationRequest(prompt="a cute fluffy cat plays trumpet", width=size, height=size, steps=steps,
                                sampler_name="DPM++ 2M", cfg_scale=7.0, seed=1)  # fmt: skip
    rows: dict[str, dict[str, list[float]]] = {}
    images = {}

    def use(backend: str) -> None:
        model.compiled_unet, model.compiled_decoder = parts if backend == "openvino" else (None, None)

    def unet_call():
        if model.compiled_unet is not None:
            return model.compiled_unet(x, t, encoder_hidden_states=ctx)
        with torch.no_grad():
            return model.unet(x, t, encoder_hidden_states=ctx, return_dict=False)

    def decode():
        from sdstudio.pipelines.components import decode_latents

        return decode_latents(model, z)

    for backend in ("torch", "openvino"):  # warm-up: first-call set-up, OpenVINO's compilation
        use(backend)
        unet_call(), decode()
        if image:
            txt2img(model, request.replace(steps=2))
    for rep in range(repeats):
        for backend in ("torch", "openvino") if rep % 2 == 0 else ("openvino", "torch"):
            use(backend)
            parts_timed = [("unet call", unet_call), ("vae decode", decode)]
            if image:
                parts_timed.append(("image", lambda: txt2img(model, request)[0].image))
            for name, fn in parts_timed:
                wall, cpu, out = timed(fn)
                rows.setdefault(f"{name}|{backend}", {"wall": [], "cpu": []})
                rows[f"{name}|{backend}"]["wall"].append(wall)
                rows[f"{name}|{backend}"]["cpu"].append(cpu)
                if name == "image":
                    images[backend] = np.asarray(out, dtype=np.int16)
    use("openvino")
    diff = np.abs(images["torch"] - images["openvino"]) if images else np.zeros(1)
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in rows.items()}
    return {"size": size, "steps": steps, "repeats": repeats, "medians": med,
            "pixel_max": int(diff.max()), "pixel_mean": float(diff.mean())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["embedded", "sd15"], choices=["embedded", "sd15"])
    parser.add_argument("--size", type=int, default=256, help="SD 1.5 image size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-image", action="store_true", help="UNet call and VAE decode only (512 px: minutes)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from sdstudio import load_model

    out = {}
    for name in args.models:
        path, size = None, 64  # the embedded model
        if name == "sd15":
            from suite import cache_dir, ensure_model

            path, size = ensure_model(cache_dir())[0], args.size
        wall, _, model = timed(lambda p=path: load_model(p, backend="openvino"))
        result = compare(model, size, args.steps, args.repeats, image=not args.no_image)
        result["load_with_openvino"] = wall
        result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        out[name] = result
        print(f"{name} {size}px {args.steps} steps (load incl. OpenVINO {wall:.1f} s; "
              f"images differ by max {result['pixel_max']} / mean {result['pixel_mean']:.3f} levels)")  # fmt: skip
        for part in ("unet call", "vae decode") + (() if args.no_image else ("image",)):
            a, b = result["medians"][f"{part}|torch"], result["medians"][f"{part}|openvino"]
            print(f"  {part:10s} torch {a['wall']:8.3f} s (CPU {a['cpu']:8.3f})  openvino {b['wall']:8.3f} s "
                  f"(CPU {b['cpu']:8.3f})  speed-up {a['wall'] / b['wall']:.2f}x (CPU {a['cpu'] / b['cpu']:.2f}x)")  # fmt: skip
        del model
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
