"""``sdstudio lab demolish|build``: the DDPM visualiser (forward noising strip, reverse trajectory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdstudio.errors import SDStudioError


def register(subparsers) -> None:
    """Add ``lab demolish`` and ``lab build`` to the CLI."""
    parser = subparsers.add_parser(
        "lab",
        help="diffusion lab: forward/reverse processes, X/Y/Z plots, prompt matrix, attention maps, "
        "prompt studies, ICTM segmentation, manifold denoising",
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="EXPERIMENT", required=True)

    p = sub.add_parser("demolish", help="forward process q(x_t|x_0): an image at increasing noise levels")
    p.add_argument("image", type=Path)
    p.add_argument("--t", default="0,50,100,200,300,500,700,999", help="comma-separated timesteps in [0, T)")
    p.add_argument(
        "--out", type=Path, default=None,
        help=".png strip or .gif animation (default outputs/lab-images/<date>/NNNNN-demolish.png)",
    )  # fmt: skip
    p.add_argument(
        "--schedule",
        choices=("linear", "cosine", "scaled_linear"),
        default=None,
        help="beta schedule (default: the model's, else scaled_linear as in SD)",
    )
    p.add_argument("--model", default=None, help="take schedule (and with --latent the VAE) from this model")
    p.add_argument(
        "--latent", action="store_true", help="noise the VAE latent (latent diffusion), decode to show"
    )
    p.add_argument("--size", type=int, default=None, help="resize the image to SIZE x SIZE first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=2, help="pixel magnification in the output")
    p.set_defaults(func=_demolish)

    p = sub.add_parser("build", help="reverse process: x_t and the predicted x_0 at every sampler step")
    p.add_argument("prompt")
    p.add_argument("--negative", default="")
    p.add_argument("--model", default=None, help="model path (default: the embedded default model)")
    p.add_argument("--sampler", default="Euler", help="A1111 sampler name")
    p.add_argument("--scheduler", default="Automatic", help="schedule type (Automatic, Karras, ...)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg-scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument(
        "--out", type=Path, default=None,
        help=".png (two rows) or .gif (default outputs/lab-images/<date>/NNNNN-build-<seed>.png)",
    )  # fmt: skip
    p.add_argument("--scale", type=int, default=2)
    p.set_defaults(func=_build)

    from sdstudio.cli import lab_attention, lab_diffgen, lab_scripts, lab_study

    lab_scripts.register(sub)
    lab_attention.register(sub)
    lab_study.register(sub)
    lab_diffgen.register(sub)


def default_out(name: str) -> Path:
    """``outputs/lab-images/<date>/NNNNN-<name>.png``, numbered like every other output (A1111 layout)."""
    from sdstudio.runtime.outputs import images_dir, next_number

    folder = images_dir("outputs", "lab")
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{next_number(folder):05d}-{name}.png"


def _load(path):
    from sdstudio.models.loader import load_model

    return load_model(path)


def _demolish(args: argparse.Namespace) -> int:
    from PIL import Image, UnidentifiedImageError

    from sdstudio.lab import diffusion_viz as viz
    from sdstudio.training.diffusion import scheduler_config

    if not args.image.is_file():
        raise SDStudioError(f"image not found: {args.image}", field="image")
    try:
        with Image.open(args.image) as im:
            x0 = viz.image_to_tensor(im, args.size)
    except UnidentifiedImageError as exc:
        raise SDStudioError(f"not an image file: {args.image}", field="image") from exc
    model = _load(args.model) if (args.model or args.latent) else None
    config = (
        model.scheduler_config
        if model and not args.schedule
        else scheduler_config(args.schedule or "scaled_linear")
    )
    ts = viz.parse_timesteps(args.t, config.get("num_train_timesteps", 1000))
    if args.latent:
        f = model.vae_scale_factor
        if x0.shape[-1] % f or x0.shape[-2] % f:
            raise SDStudioError(f"--latent needs image sides divisible by {f}; use --size", field="size")
    if args.latent:
        model.ensure_torch_decoder()  # the latent path decodes with the PyTorch VAE
    frames = viz.demolish(x0, ts, config, args.seed, model.vae if args.latent else None)
    args.out = args.out or default_out("demolish")
    out = viz.save_frames(viz.tensor_to_pil(frames), [f"t={t}" for t in ts], args.out, args.scale)
    print(f"wrote {out}")
    return 0


def _build(args: argparse.Namespace) -> int:
    from sdstudio.config import GenerationRequest
    from sdstudio.lab import diffusion_viz as viz

    model = _load(args.model)
    size = model.native_size
    request = GenerationRequest(
        prompt=args.prompt,
        negative_prompt=args.negative,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        steps=args.steps,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        width=args.width or size,
        height=args.height or size,
    )
    traj = viz.build(model, request)
    args.out = args.out or default_out(f"build-{args.seed}")
    xt, x0 = viz.tensor_to_pil(traj.x_t), viz.tensor_to_pil(traj.x0_pred)
    labels = [f"s={s:.2g}" for s in traj.sigmas]
    if args.out.suffix.lower() == ".gif":
        frames = [viz.labelled_strip([a, b], [lab, "x0"], args.scale) for a, b, lab in zip(xt, x0, labels)]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=300, loop=0)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        viz.trajectory_picture(traj, args.scale).save(args.out)
    print(f"wrote {args.out}")
    return 0
