"""``sdstudio lab segment | denoise-manifold``: the diffusion generated methods (diffuse, then threshold
or project): ICTM segmentation and denoising of angle, unit-vector and rotation fields."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sdstudio.errors import SDStudioError

MAX_ITER = 500


def register(sub) -> None:
    """Add ``lab segment`` and ``lab denoise-manifold`` to the CLI."""
    p = sub.add_parser(
        "segment",
        help="ICTM segmentation: piecewise-constant regions by heat-kernel convolution + thresholding",
    )
    p.add_argument("image", type=Path)
    p.add_argument("--phases", type=int, default=2, help="number of regions K, 2..8")
    p.add_argument("--tau", type=float, default=4.0, help="heat-kernel time in px² (blur std √(2τ) px)")
    p.add_argument(
        "--lambda", dest="lam", type=float, default=1.0, help="weight of the interface length (per px)"
    )
    p.add_argument("--max-iter", type=int, default=300, help=f"at most {MAX_ITER}")
    p.add_argument("--init", choices=("kmeans", "quantile", "box"), default="kmeans")
    p.add_argument("--boundary", choices=("neumann", "periodic"), default="neumann")
    p.add_argument("--size", type=int, default=None, help="downscale so the longer side is at most SIZE")
    p.add_argument("--out", type=Path, default=Path("segment"), help="output folder")
    p.add_argument("--scale", type=int, default=2, help="pixel magnification of the animation")
    p.set_defaults(func=_segment)

    p = sub.add_parser(
        "denoise-manifold",
        help="denoise angle / unit-vector / rotation fields by diffusion + projection (built-in examples)",
    )
    p.add_argument("--example", choices=("s1", "s2", "so3"), required=True)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--noise", type=float, default=None, help="noise in radians (default per example)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tau", type=float, default=0.5, help="heat-kernel time in px²")
    p.add_argument("--lambda", dest="lam", type=float, default=0.3, help="fidelity weight towards the data")
    p.add_argument("--max-iter", type=int, default=300, help=f"at most {MAX_ITER}")
    p.add_argument("--out", type=Path, default=Path("denoise-manifold"), help="output folder")
    p.add_argument("--scale", type=int, default=3)
    p.set_defaults(func=_denoise)


def _check(args: argparse.Namespace) -> None:
    if args.tau <= 0 or args.lam < 0:
        raise SDStudioError(f"need --tau > 0 and --lambda >= 0, got {args.tau} and {args.lam}", field="tau")
    if not 0 <= args.max_iter <= MAX_ITER:
        raise SDStudioError(f"--max-iter must be in [0, {MAX_ITER}], got {args.max_iter}", field="max_iter")


def load_segment_image(path: Path, size: int | None = None):
    """Open ``path`` as RGB (or L for grey images), downscaled so its longer side is at most ``size``."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise SDStudioError(f"image not found: {path}", field="image")
    try:
        with Image.open(path) as im:
            image = im.convert("L" if im.mode in ("L", "I", "F", "1") else "RGB")
    except UnidentifiedImageError as exc:
        raise SDStudioError(f"not an image file: {path}", field="image") from exc
    if size and max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def _segment(args: argparse.Namespace) -> int:
    from PIL import Image

    from sdstudio.lab import ictm

    _check(args)
    if not 2 <= args.phases <= ictm.MAX_PHASES:
        raise SDStudioError(f"--phases must be in [2, {ictm.MAX_PHASES}], got {args.phases}", field="phases")
    image = load_segment_image(args.image, args.size)
    result = ictm.segment(
        image, args.phases, args.tau, args.lam, args.max_iter, args.init, args.boundary, keep_history=True
    )
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ictm.regions_image(result.labels, result.means)).save(out / "regions.png")
    Image.fromarray(ictm.label_map(result.labels, args.phases)).save(out / "labels.png")
    Image.fromarray(ictm.overlay(image, result.labels)).save(out / "overlay.png")
    ictm.write_energy(result, out / "energy.csv", out / "energy.png")
    frames = ictm.animation_frames(image, result, scale=args.scale)
    frames[0].save(out / "iterations.gif", save_all=True, append_images=frames[1:], duration=250, loop=0)
    summary = {
        "method": "ICTM (Wang & Wang, arXiv:1904.10917; Wang, Li, Wei, Wang, JCP 350, 2017)",
        "image": str(args.image), "size": [image.height, image.width], "phases": args.phases,
        "tau": args.tau, "lambda": args.lam, "init": args.init, "boundary": args.boundary,
        "iterations": result.iterations, "converged": result.converged, "seconds": round(result.seconds, 4),
        "energy_first": result.energy[0], "energy_last": result.energy[-1],
        "means": result.means.round(5).tolist(),
        "pixels_per_region": [int((result.labels == k).sum()) for k in range(args.phases)],
    }  # fmt: skip
    (out / "segment.json").write_text(json.dumps(summary, indent=2))
    state = "fixed point" if result.converged else "max iterations"
    print(
        f"{result.iterations} iterations ({state}), {result.seconds * 1000:.0f} ms, "
        f"energy {result.energy[0]:.5g} -> {result.energy[-1]:.5g}"
    )
    print(f"wrote regions.png, labels.png, overlay.png, energy.csv, energy.png, iterations.gif in {out}")
    return 0


def _denoise(args: argparse.Namespace) -> int:
    from PIL import Image

    from sdstudio.lab import manifold
    from sdstudio.lab.diffusion_viz import labelled_strip

    _check(args)
    if not 8 <= args.size <= 512:
        raise SDStudioError(f"--size must be in [8, 512], got {args.size}", field="size")
    ex = manifold.example(args.example, args.size, args.noise, args.seed)
    figures, result = manifold.compare(ex, args.tau, args.lam, max_iter=args.max_iter)
    naive = manifold.blur_project(ex.noisy, ex.target, figures["naive_best_sigma"])
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pictures = [ex.truth, ex.noisy, result.field, naive]
    labels = ["truth", "noisy", "diffuse+project", f"blur s={figures['naive_best_sigma']:g}"]
    images = [Image.fromarray(manifold.to_rgb(p, ex.target)) for p in pictures]
    labelled_strip(images, labels, args.scale).save(out / "fields.png")
    rows = "".join(f"{i},{e:.6g},{g:.10g}\n" for i, (e, g) in enumerate(zip(result.error, result.energy)))
    (out / "error.csv").write_text("iteration,error,energy\n" + rows)
    _error_plot(figures, result, out / "error.png")
    data = figures | {"error_per_iteration": result.error, "energy_per_iteration": result.energy}
    (out / "denoise.json").write_text(json.dumps(data, indent=2))
    unit = "deg" if figures["error_unit"] == "degrees" else ""
    print(
        f"{ex.name} ({ex.target.name}): error {figures['error_noisy']:.2f} -> {figures['error_denoised']:.2f}"
        f" {unit} in {result.iterations} iterations ({result.seconds:.2f} s); blur+project at the best "
        f"sigma {figures['naive_best_sigma']:g}: {figures['naive_best_error']:.2f} {unit}"
    )
    print(f"wrote fields.png, error.csv, error.png, denoise.json in {out}")
    return 0


def _error_plot(figures: dict, result, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot(range(len(result.error)), result.error, label="diffuse + project")
    ax.axhline(figures["naive_best_error"], color="grey", ls="--", label="blur + project (best sigma)")
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"mean error ({figures['error_unit']})")
    ax.set_yscale("log")
    ax.set_title(f"{figures['example']}: error against the truth")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
