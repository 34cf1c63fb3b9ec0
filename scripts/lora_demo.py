"""Teach the embedded default model a style it cannot draw, with a LoRA trained in minutes on a CPU.

The "zqx" style is the colour negative of an emoji (black background, inverted colours). The
training images are the embedded model's own drawings of a few prompts, inverted, captioned
"zqx <prompt>". After training, held-out prompts ("zqx <new prompt>") are drawn with and without
``<lora:zqx:1>``, and the same prompts without the trigger word with the LoRA (does it leak?).

    python3 scripts/lora_demo.py --minutes 8

writes ``OUT/data`` (images + .txt captions; OUT defaults to ``outputs/lora-demo``), trains with
``sdstudio train lora`` (the command is printed), and saves ``OUT/lora-demo.png`` plus the measured
figure: the mean brightness of each image's border (white background = 1, the zqx style = dark).
``--image docs/lora-demo.png`` refreshes the picture the docs show; nothing tracked is written unless
asked for.
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


def wrap(draw: ImageDraw.ImageDraw, text: str, width: float) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken between words (a longer word stays whole)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def grid(rows: list[tuple[str, list[Image.Image]]], labels: list[str], cell: int = 96) -> Image.Image:
    """Images in rows under column labels, titles on the left; 64 px drawings are enlarged to ``cell``
    with nearest-neighbour, and every label is wrapped to its column, never cut."""
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line = 12  # PIL's default bitmap font is 11 px high
    columns = [wrap(draw, label, cell - 4) for label in labels]
    cell = max(cell, *(int(draw.textlength(w)) + 4 for c in columns for w in c))
    top = line * max(len(c) for c in columns) + 6
    left = max(int(draw.textlength(title)) for title, _ in rows) + 12
    out = Image.new("RGB", (left + cell * len(labels), top + cell * len(rows)), "white")
    draw = ImageDraw.Draw(out)
    for j, lines in enumerate(columns):
        for k, text in enumerate(lines):
            draw.text((left + j * cell + 2, 2 + k * line), text, fill="black")
    for i, (title, images) in enumerate(rows):
        draw.text((4, top + i * cell + cell // 2 - line // 2), title, fill="black")
        for j, im in enumerate(images):
            out.paste(
                im.convert("RGB").resize((cell, cell), Image.NEAREST), (left + j * cell, top + i * cell)
            )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, default=Path("outputs/lora-demo"), help="work folder (default %(default)s)"
    )
    ap.add_argument("--minutes", type=float, default=8.0, help="training time budget")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, default=3, help="training images per prompt")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--image", type=Path, default=None, help="the grid (default OUT/lora-demo.png)")
    args = ap.parse_args(argv)
    args.image = args.image or args.out / "lora-demo.png"
    return args


def main() -> int:
    args = parse_args()

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
