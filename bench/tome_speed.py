"""Token merging (ToMe) speed: UNet forward of the random-weight SD 1.5, plain vs ToMe, in one process.

    python3 bench/tome_speed.py [--sizes 256 512] [--ratios 0.3 0.5] [--repeats 3] [--json out.json]

One UNet call at batch 2 (CFG: uncond + cond rows), fp32, 77-token random context, per image
size (latent = size / 8). Variants alternate in a rotating order, each repeated; medians of wall
and CPU seconds (``time.process_time``, all threads) are reported as ratios to the plain call
measured in the same run. At the largest size also DeepCache's shallow call (conv_in, first down
block, last up block: where the top-level attention lives) with and without ToMe, and the cost
of installing/removing the ToMe processors (paid once per UNet call). The UNet is the suite's
cached random SD 1.5 (``~/.cache/sdstudio/bench/sd15-random-fp16-diffusers``, fp16 weights read
into fp32) if present, else the same architecture built from the shipped config (seed 0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def sd15_unet():
    """(UNet, where it came from): the suite's cached weights, else the shipped config, random (seed 0)."""
    from diffusers import UNet2DConditionModel
    from suite import cache_dir

    folder = cache_dir() / "sd15-random-fp16-diffusers" / "unet"
    if (folder / "config.json").is_file():
        unet = UNet2DConditionModel.from_pretrained(folder, torch_dtype=torch.float32)
        return unet.eval(), str(folder)
    from sdstudio.families.sd.architectures import ARCHITECTURES, component_config

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(component_config(ARCHITECTURES["sd1"], "unet"))
    return unet.eval(), "shipped SD 1.5 config, random weights (seed 0)"


def timed(fn) -> tuple[float, float, torch.Tensor]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def variants(unet, ratios, size: int, shallow: bool) -> dict:
    """name -> zero-argument callable running one UNet call of the batch-2 CFG input."""
    from sdstudio.pipelines.deepcache import DeepCacheUNet
    from sdstudio.pipelines.tome import ToMeUNet

    g = torch.Generator().manual_seed(size)
    x = torch.randn(2, 4, size // 8, size // 8, generator=g)  # (B, 4, h, w)
    kw = {"encoder_hidden_states": torch.randn(2, 77, 768, generator=g), "return_dict": False}
    t = torch.tensor([500.0, 500.0])
    out = {"plain": lambda: unet(x, t, **kw)[0]}
    for r in ratios:
        out[f"ToMe {r}"] = lambda r=r: ToMeUNet(unet, unet, r)(x, t, **kw)[0]
    if shallow:
        cache = DeepCacheUNet(unet, interval=10**9)  # after its first (full) call every call is shallow
        cache(x, t, **kw)
        out["DeepCache shallow"] = lambda: cache(x, t, **kw)[0]
        for r in ratios:
            out[f"DeepCache shallow + ToMe {r}"] = lambda r=r: ToMeUNet(cache, unet, r)(x, t, **kw)[0]
    return out


def install_cost(unet, size: int, n: int = 20) -> float:
    """Median seconds to install and remove ToMe (what ToMeUNet adds to each call, besides merging)."""
    from sdstudio.pipelines.tome import self_attention_layers, token_merging

    layers = self_attention_layers(unet)  # found once per batch (ToMeUNet.__init__)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        with token_merging(layers, 0.5, (size // 8, size // 8)):
            pass
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_size(unet, size: int, ratios, repeats: int, shallow: bool) -> dict:
    calls = variants(unet, ratios, size, shallow)
    names = list(calls)
    wall = {n: [] for n in names}
    cpu = {n: [] for n in names}
    outputs = {}
    with torch.no_grad():
        for n in names:  # warm-up, and the outputs for the error column
            outputs[n] = calls[n]()
        for rep in range(repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotating order
            for n in order:
                w, c, _ = timed(calls[n])
                wall[n].append(w)
                cpu[n].append(c)
        install = install_cost(unet, size)
    rows = {}
    for n in names:
        ref = "DeepCache shallow" if n.startswith("DeepCache") else "plain"
        err = (outputs[n] - outputs[ref]).norm() / outputs[ref].norm()
        rows[n] = {
            "wall": statistics.median(wall[n]),
            "cpu": statistics.median(cpu[n]),
            "speedup_wall": statistics.median(wall[ref]) / statistics.median(wall[n]),
            "speedup_cpu": statistics.median(cpu[ref]) / statistics.median(cpu[n]),
            "rel_error": float(err),  # ||out - out_ref|| / ||out_ref||, random weights
        }
        r = rows[n]
        print(f"{size}px {n:30s} wall {r['wall']:6.2f} s  cpu {r['cpu']:6.2f} s  x{r['speedup_wall']:.2f} wall"
              f"  x{r['speedup_cpu']:.2f} cpu  rel.err {r['rel_error']:.4f}", flush=True)  # fmt: skip
    print(f"{size}px install + remove ToMe: {install * 1e3:.2f} ms per UNet call", flush=True)
    return {"rows": rows, "install_s": install}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    unet, source = sd15_unet()
    print(f"UNet: {source}; torch threads {torch.get_num_threads()}", flush=True)
    out = {"source": source, "threads": torch.get_num_threads(), "repeats": args.repeats, "sizes": {}}
    for size in args.sizes:
        out["sizes"][size] = run_size(unet, size, args.ratios, args.repeats, shallow=size == max(args.sizes))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
