"""Train the default model (VAE -> mini-CLIP -> LDM) under a hard wall-clock budget, then pack it.

Used for the one GPU run (scripts/train_default_model.sh); also runs on CPU with ``--tiny`` as a
dry run. Every stage stops by wall clock; a failing stage is logged and the run still packs what
it has. Output: OUT/run (logs, loss curves, sample grids, fp16 model) as OUT/pack.tar.part-NN.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data")
    ap.add_argument("out")
    ap.add_argument("--total", type=float, default=500.0, help="seconds from start to the end of packing")
    ap.add_argument("--vae", type=float, default=90.0)
    ap.add_argument("--clip", type=float, default=80.0)
    ap.add_argument("--reserve", type=float, default=50.0, help="seconds kept for exports and packing")
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument(
        "--work", default=None, help="run folder (default OUT/run); keep it outside a fetched OUT"
    )
    ap.add_argument(
        "--full-steps", type=int, default=0, help="cap every stage at N steps (full-size dry run)"
    )
    args = ap.parse_args()

    import torch

    from sdstudio.training.data import load_image_folder
    from sdstudio.training.recipe import DefaultRecipe, train_default_model

    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        log(f"device {torch.cuda.get_device_name()} torch {torch.__version__}")
    out = Path(args.out)
    run = Path(args.work) if args.work else out / "run"
    data = load_image_folder(args.data, 64, split="train")
    log(f"loaded {len(data)} training images")
    recipe = DefaultRecipe(mixed_precision="bf16" if cuda else "no", checkpoint_every_s=1e9)
    if args.tiny:
        recipe = recipe.tiny()
        data = data.subset(list(range(64)))
    if args.full_steps:
        cap = {"steps": args.full_steps, "batch_size": 8, "sample_every": args.full_steps}
        recipe = replace(
            recipe,
            vae_plan=replace(recipe.vae_plan, **cap),
            clip_plan=replace(recipe.clip_plan, **cap),
            ldm_plan=replace(recipe.ldm_plan, **cap),
        )
        data = data.subset(list(range(64)))
    recipe = replace(
        recipe,
        vae_plan=replace(recipe.vae_plan, time_budget_s=args.vae),
        clip_plan=replace(recipe.clip_plan, time_budget_s=args.clip),
    )
    status = {}
    for stage in ("vae", "clip", "ldm"):
        if stage == "ldm":
            left = args.total - (time.monotonic() - T0) - args.reserve
            recipe = replace(recipe, ldm_plan=replace(recipe.ldm_plan, time_budget_s=max(10.0, left)))
            log(f"ldm budget {left:.0f}s")
        if stage != "ldm" and (run / stage / "final").is_dir():
            log(f"stage {stage} already done, skipped")
            continue
        try:
            log(f"stage {stage} start")
            train_default_model(data, run, recipe, progress=False, stages=(stage,), assemble=stage == "ldm")
            status[stage] = "ok"
        except Exception:  # noqa: BLE001 - keep what earlier stages made
            status[stage] = traceback.format_exc()
            log(f"stage {stage} FAILED\n{status[stage]}")
            if stage != "ldm":
                break
        log(f"stage {stage} done")
    (run / "status.json").write_text(json.dumps(status, indent=2))
    pack(run, out)
    log("packed")
    return 0


def pack(run: Path, out: Path) -> None:
    """Tar the run without checkpoints and fp32 finals, split into 15 MiB parts under ``out``."""
    tar = out / "pack.tar"
    out.mkdir(parents=True, exist_ok=True)
    cmd = [
        "tar",
        "-cf",
        str(tar),
        "--exclude=checkpoint.pt",
        "--exclude=final",
        "-C",
        str(run.parent),
        run.name,
    ]
    subprocess.run(cmd, check=True)
    subprocess.run(["split", "-b", "15M", "-d", str(tar), str(out / "pack.tar.part-")], check=True)
    tar.unlink()


if __name__ == "__main__":
    sys.exit(main())
