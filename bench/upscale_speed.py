"""Seconds per tile and per output megapixel of model upscalers on this CPU, and the memory a tiled
run holds beyond the model (random weights; spandrel's own architecture classes).

    python3 bench/upscale_speed.py [--tile 512] [--repeat 2]

Contenders: a tiny Compact (8 features, 2 convs), Real-ESRGAN Compact at full size (64 features, 32
convs: realesr-general-x4v3), ESRGAN at full size (64 filters, 23 RRDB: RealESRGAN_x4plus; on a
128 px tile, as a 512 px tile takes minutes here). Each at 4x.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    import torch

    from sdstudio.upscale.load import import_spandrel, upscaler_from_state_dict
    from sdstudio.upscale.tiles import upscale_tiled

    ap = argparse.ArgumentParser()
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    import_spandrel()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    contenders = {
        "compact-tiny": (Compact(num_feat=8, num_conv=2, upscale=4), args.tile),
        "compact-full": (Compact(num_feat=64, num_conv=32, upscale=4), args.tile),
        "esrgan-full": (ESRGAN(num_filters=64, num_blocks=23, scale=4), min(args.tile, 128)),
    }
    torch.set_grad_enabled(False)
    # memory: a 4x upscale of 512x512 to 2048x2048 in 128 px tiles with the tiny model
    up = upscaler_from_state_dict(contenders["compact-tiny"][0].state_dict())  # first: a clean peak
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.rand(1, 3, 512, 512)
    calls = []
    upscale_tiled(up.model, x, 4, tile=128, overlap=16, progress=lambda d, n: calls.append(d))
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    bound = 16 * 2048 * 2048 / 2**20
    print(
        f"512->2048 in {len(calls)} tiles of 128 px: peak RSS grew {grown:.0f} MiB (accumulators: {bound:.0f} MiB)"
    )

    for name, (net, tile) in contenders.items():
        up = upscaler_from_state_dict(net.state_dict())
        x = torch.rand(1, 3, tile, tile)
        up.model(x[:, :, :32, :32])  # warm-up
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            upscale_tiled(up.model, x, up.scale, tile=tile, overlap=16)
            times.append(time.perf_counter() - t)
        best = min(times)
        mp = (tile * up.scale) ** 2 / 1e6
        print(
            f"{name:13s} {tile}px tile -> {tile * up.scale}px: {best:7.3f} s/tile, {best / mp:7.3f} s per output MP"
        )


if __name__ == "__main__":
    main()
