"""``sdstudio convert SRC DST [--to original|diffusers] [--half]``: model format conversion, offline.

original = one A1111/CompVis-layout .safetensors file; diffusers = a folder with model_index.json.
SRC may be either (or a weights-only .ckpt). Without ``--to`` the target follows DST: a name ending
in .safetensors means original, anything else a diffusers folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sdstudio.errors import SDStudioError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``convert`` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="convert a model between single-file (A1111) and diffusers folder layouts",
        description="Convert a model between the original single-file layout (A1111/CompVis .safetensors) "
        "and a diffusers folder. Offline; pickles are read weights-only.",
    )
    p.add_argument("src", help="source: diffusers folder, .safetensors, or .ckpt/.pt (read weights-only)")
    p.add_argument("dst", help="destination: a .safetensors file (original layout) or a folder (diffusers)")
    p.add_argument("--to", choices=("original", "diffusers"), help="target layout (default: from DST's name)")
    p.add_argument("--half", action="store_true", help="store weights as fp16")
    p.add_argument(
        "--prediction-type",
        choices=("epsilon", "v_prediction"),
        help="override the detected prediction type (SD 2.x: 512 base = epsilon, 768 = v_prediction)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=run)


def target_layout(dst: str, to: str | None) -> str:
    """Return "original" or "diffusers" for DST and an optional explicit ``--to``."""
    if to:
        return to
    return "original" if dst.lower().endswith(".safetensors") else "diffusers"


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; print what was written. Returns the exit code."""
    import torch

    from sdstudio.models.loader import load_model
    from sdstudio.models.save import save_diffusers, save_single_file

    layout = target_layout(args.dst, args.to)
    dst = Path(args.dst).expanduser()
    if dst.exists() and not args.overwrite:
        raise SDStudioError(f"{dst} already exists; pass --overwrite to replace it", field="dst")
    if Path(args.src).expanduser().resolve() == dst.resolve():
        raise SDStudioError("SRC and DST are the same path", field="dst")
    model = load_model(args.src, dtype=torch.float32, prediction_type=args.prediction_type, backend="torch")
    if layout == "original":
        out = save_single_file(model, dst, half=args.half)
    else:
        out = save_diffusers(model, dst, half=args.half)
    precision = "fp16" if args.half else "fp32"
    print(
        f"{model.name} ({model.arch}{', inpainting' if model.is_inpainting else ''}, {model.prediction_type})"
    )
    print(f"wrote {layout} {precision} model to {out}")
    return 0
