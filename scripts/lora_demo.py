"""Teach the embedded default model a style it cannot draw, with a LoRA trained in minutes on a CPU.

The "zqx" style is the colour negative of an emoji (black background, inverted colours). The
training images are the embedded model's own drawings of a few prompts, inverted, captioned
"zqx <prompt>". After training, held-out prompts ("zqx <new prompt>") are drawn with and without
``<lora:zqx:1>``, and the same prompts without the trigger word with the LoRA (does it leak?).

    python3 scripts/lora_demo.py --out runs/lora-demo --minutes 8

writes ``OUT/data`` (images + .txt captions), trains with ``sdstudio train lora`` (the command is
printed), and saves ``docs/lora-demo.png`` plus the measured figure: the mean brightness of each
image's border (white background = 1, the zqx style = dark).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

TRAIN_PROMPTS = ["cat face", "red heart", "pizza", "smiling face", "sun", "star", "apple", "dog face"]
HELD_OUT = ["rocket", "flag of Japan", "trumpet", "ghost", "house"]


def _generate(model, prompt: str, seed: int, library=None):
    from sdstudio.config import GenerationRequest
    from sdstudio.pipelines import txt2img

    req = GenerationRequest(prompt=prompt, width=64, height=64, steps=20, cfg_scale=5.0, seed=seed,
                            sampler_name="DPM++ 2M")  # fmt: skip
    return txt2img(model, req, networks=library)[0].image


def border_brightness(image: Image.Image) -> float:
    """Mean brightness in [0, 1] of the 6-px frame around the image (the emoji's background)."""
    a = np.asarray(image.convert("L"), dtype=np.float32) / 255
    frame = np.concatenate([a[:6].ravel(), a[-6:].ravel(), a[6:-6, :6].ravel(), a[6:-6, -6:].ravel()])
    return float(frame.mean())


def make_data(model, folder: Path, seeds: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for prompt in TRAIN_PROMPTS:
        for seed in range(seeds):
            image = ImageOps.invert(_generate(model, prompt, seed).convert("RGB"))
            stem = f"{prompt.replace(' ', '_')}-{seed}"
            image.save(folder / f"{stem}.png")
            (folder / f"{stem}.txt").write_text(f"zqx {prompt}")


def grid(rows: list[tuple[str, list[Image.Image]]], labels: list[str]) -> Image.Image:
    cell, left, top = 64, 150, 14
    out = Image.new("RGB", (left + cell * len(labels), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for j, label in enumerate(labels):
        draw.text((left + j * cell + 2, 1), label[:10], fill="black")
    for i, (title, images) in enumerate(rows):
        draw.text((4, top + i * cell + 26), title, fill="black")
        for j, im in enumerate(images):
            out.paste(im.convert("RGB"), (left + j * cell, top + i * cell))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/lora-demo"))
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3, help="training images per prompt")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image", type=Path, default=Path("docs/lora-demo.png"))
    args = ap.parse_args()

    from sdstudio.models.loader import load_model
    from sdstudio.networks import NetworkLibrary

    model = load_model(None, precision="fp32")
    t0 = time.monotonic()
    if not (args.out / "data").is_dir():
        make_data(model, args.out / "data", args.seeds)
        print(f"data: {len(TRAIN_PROMPTS) * args.seeds} images in {time.monotonic() - t0:.0f} s")
    cmd = [
        sys.executable, "-c", "import sys; from sdstudio.cli import main; sys.exit(main())", "train", "lora", str(args.out / "data"), "--out", str(args.out / "zqx"),
        "--rank", "8", "--alpha", "8", "--targets", "all", "--lr", "1e-3", "--batch-size", str(args.batch_size),
        "--warmup-steps", "20", "--steps", str(args.steps), "--max-minutes", str(args.minutes),
        "--sample-every", "200", "--preview", "zqx rocket", "--preview", "zqx cat face", "--cpu",
    ]  # fmt: skip
    print("$ sdstudio", " ".join(cmd[3:]))
    t0 = time.monotonic()
    subprocess.run(cmd, check=True)
    print(f"training: {time.monotonic() - t0:.0f} s")

    lora_dir = args.out / "models" / "Lora"
    lora_dir.mkdir(parents=True, exist_ok=True)
    (lora_dir / "zqx.safetensors").write_bytes((args.out / "zqx" / "final" / "zqx.safetensors").read_bytes())
    library = NetworkLibrary.from_models_dir(args.out / "models")
    rows = [
        ("zqx <prompt>, no LoRA", [_generate(model, f"zqx {p}", 1, library) for p in HELD_OUT]),
        (
            "zqx <prompt> <lora:zqx:1>",
            [_generate(model, f"zqx {p} <lora:zqx:1>", 1, library) for p in HELD_OUT],
        ),
        ("<prompt> <lora:zqx:1>", [_generate(model, f"{p} <lora:zqx:1>", 1, library) for p in HELD_OUT]),
    ]
    args.image.parent.mkdir(parents=True, exist_ok=True)
    grid(rows, HELD_OUT).quantize(colors=128, method=0).save(args.image, optimize=True)  # small PNG for docs/
    for title, images in rows:
        values = [border_brightness(im) for im in images]
        print(f"{title:28s} border brightness (held-out prompts): mean {np.mean(values):.2f} "
              f"({', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
    print(f"grid: {args.image}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
