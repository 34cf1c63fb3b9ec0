"""``sdstudio lab attention PROMPT``: DAAM word-attention heat maps and per-word attention mass."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from sdstudio.cli.common import add_model_args, load_model_from_args


def register(sub) -> None:
    p = sub.add_parser(
        "attention", help="word-attention maps (DAAM): one heat map per prompt word + its mass"
    )
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--words", default="", help="comma-separated words to map (default: every prompt word)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="DPM++ 2M")
    p.add_argument("--scheduler", default="Automatic")
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("attention"), help="output folder")
    p.add_argument("--scale", type=int, default=3, help="pixel magnification of the strip")
    add_model_args(p)
    p.set_defaults(func=_attention)


def _attention(args: argparse.Namespace) -> int:
    from sdstudio.config import GenerationRequest
    from sdstudio.lab.attention import attention_maps, attention_picture, overlay

    model = load_model_from_args(args)
    size = model.defaults.size or model.native_size
    request = GenerationRequest(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, sampler_name=args.sampler,
        scheduler=args.scheduler, cfg_scale=args.cfg_scale, seed=args.seed,
        width=args.width or size, height=args.height or size,
    ).validate()  # fmt: skip
    result = attention_maps(model, request)
    words = [w.strip() for w in args.words.split(",") if w.strip()] or None
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    result.image.save(out / "image.png")
    chosen = [result.word(w) for w in words] if words else result.words
    for i, w in enumerate(chosen):
        path = out / f"word-{i:02d}-{_slug(w.text)}.png"
        overlay(result.image, w.heatmap).save(path)
        print(f"{w.text!r:>16}  mass {w.mass:.4f}  {path}")
    attention_picture(result, words, args.scale).save(out / "attention.png")
    data = result.to_json() | {"requested_words": [{"word": w.text, "mass": w.mass} for w in chosen]}
    (out / "attention.json").write_text(json.dumps(data, indent=2, ensure_ascii=False))
    print(f"wrote {out / 'attention.png'} and {out / 'attention.json'}")
    return 0


def _slug(text: str) -> str:
    return re.sub(r"[^\w]+", "_", text).strip("_") or "token"
