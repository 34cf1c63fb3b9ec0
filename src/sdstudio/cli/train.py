"""``sdstudio train ddpm|vae|clip|ldm|lora|taesd|default|eval``: training (see sdstudio.training)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sdstudio.errors import SDStudioError


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc


def _groups(channels: tuple[int, ...]) -> int:
    """Return the GroupNorm group count: 32 as in SD when every width allows it, else their common divisor."""
    import math

    g = math.gcd(*channels)
    return 32 if g % 32 == 0 else math.gcd(g, 32)


def _loop_args(p: argparse.ArgumentParser, steps: int, batch: int, lr: float, data: bool = True) -> None:
    if data:
        p.add_argument("data", type=Path, help="image folder with captions.jsonl or a .txt per image")
    p.add_argument(
        "--out", type=Path, required=True, help="run folder (checkpoint, samples, loss.png, final/)"
    )
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--checkpoint-minutes", type=float, default=5.0, help="save checkpoint.pt this often")
    p.add_argument("--sample-every", type=int, default=500, help="write a sample grid every N steps")
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop (and save) after this wall-clock time"
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt exactly")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is available")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--split", default="train", help="rows of captions.jsonl to use ('all' for every row)")


def _loop_config(args: argparse.Namespace):
    from sdstudio.training.loop import LoopConfig

    return LoopConfig(
        out_dir=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        checkpoint_every_s=args.checkpoint_minutes * 60,
        sample_every=args.sample_every,
        time_budget_s=args.max_minutes * 60 if args.max_minutes else None,
        resume=args.resume,
        progress=not args.no_progress,
        cpu=args.cpu,
    )


def _data(args: argparse.Namespace, size: int):
    from sdstudio.training.data import load_image_folder

    return load_image_folder(args.data, size, split=None if args.split == "all" else args.split)


def register(subparsers) -> None:
    """Add ``train`` and its sub-commands to the CLI."""
    parser = subparsers.add_parser(
        "train", help="train DDPM / VAE / mini-CLIP / latent diffusion from scratch; LoRA; distil a tiny VAE"
    )
    sub = parser.add_subparsers(dest="train_command", metavar="KIND", required=True)

    p = sub.add_parser("ddpm", help="pixel-space DDPM (Ho et al. 2020)")
    _loop_args(p, 10000, 64, 2e-4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=_ints, default=(64, 128, 128))
    p.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear"), default="linear")
    p.add_argument("--prediction", choices=("eps", "v"), default="eps")
    p.add_argument("--condition", choices=("none", "class", "text"), default="none")
    p.add_argument("--condition-dropout", type=float, default=0.1)
    p.add_argument(
        "--text-encoder", default=None, help="frozen CLIPTextModel folder (else train a small one)"
    )
    p.add_argument("--ema", type=float, default=0.999)
    p.set_defaults(func=_ddpm)

    p = sub.add_parser("vae", help="KL autoencoder (diffusers AutoencoderKL)")
    _loop_args(p, 20000, 64, 4e-4)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=_ints, default=(64, 128, 128), help="one per level; len-1 downsamples")
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--recon", choices=("l1", "mse", "l1+mse"), default="l1")
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.set_defaults(func=_vae)

    p = sub.add_parser("clip", help="mini-CLIP: CLIP text transformer + conv image encoder, contrastive")
    _loop_args(p, 20000, 512, 1e-3)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--embed-dim", type=int, default=128)
    p.set_defaults(func=_clip)

    p = sub.add_parser("ldm", help="text-to-image latent diffusion over a trained VAE and mini-CLIP")
    _loop_args(p, 100000, 256, 3e-4)
    p.add_argument("--vae", type=Path, required=True, help="VAE folder (train vae's final/vae)")
    p.add_argument(
        "--text-encoder", type=Path, required=True, help="CLIPTextModel folder (clip's final/text_encoder)"
    )
    p.add_argument("--channels", type=_ints, default=(64, 128, 128))
    p.add_argument("--schedule", choices=("linear", "cosine", "scaled_linear"), default="scaled_linear")
    p.add_argument("--prediction", choices=("eps", "v"), default="eps")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--ema", type=float, default=0.999)
    p.set_defaults(func=_ldm)

    p = sub.add_parser(
        "lora", help="LoRA fine-tuning (peft) of any checkpoint; saves a kohya/A1111 LoRA file"
    )
    _loop_args(p, 500, 4, 1e-4)
    p.add_argument("--model", default=None, help="checkpoint to adapt (default: the embedded model)")
    p.add_argument("--rank", type=int, default=4, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank, scale 1)")
    p.add_argument(
        "--targets",
        choices=("attention", "attention+ff", "all"),
        default="attention",
        help="attention projections; + transformer feed-forward/proj; all = + resnet convolutions (LoCon)",
    )
    p.add_argument("--name", default=None, help="LoRA file name (default: the --out folder's name)")
    p.add_argument("--size", type=int, default=0, help="training size in pixels (default: the model's)")
    p.add_argument("--caption-dropout", type=float, default=0.0)
    p.add_argument("--preview", action="append", default=None, help="prompt for the sample grids (repeat)")
    p.add_argument("--preview-steps", type=int, default=15)
    p.set_defaults(func=_lora)

    p = sub.add_parser(
        "taesd", help="distil a tiny VAE decoder (TAESD, diffusers AutoencoderTiny) from a model's VAE"
    )
    _loop_args(p, 2000, 16, 1e-3, data=False)
    p.add_argument("--model", default=None, help="whose VAE to distil (default: the embedded model)")
    p.add_argument(
        "--data", type=Path, default=None,
        help="image folder (default: the model folder's card/ images, else --generate images of the model)",
    )  # fmt: skip
    p.add_argument("--generate", type=int, default=64, help="images to generate when there is no data")
    p.add_argument("--size", type=int, default=0, help="training size in pixels (default: the model's)")
    p.add_argument("--channels", type=int, default=64, help="width of every stage (TAESD: 64)")
    p.add_argument("--blocks", type=int, default=3, help="residual blocks per stage (TAESD: 3)")
    p.add_argument("--l1-weight", type=float, default=0.0, help="add this times the L1 loss to the MSE")
    p.add_argument("--no-encoder", action="store_true", help="train the decoder only (what fast mode uses)")
    p.add_argument("--ema", type=float, default=None, help="EMA decay of the exported weights (default none)")
    p.add_argument("--half", action="store_true", help="export fp16 weights")
    p.set_defaults(func=_taesd)

    p = sub.add_parser("default", help="the default model's recipe: vae -> clip -> ldm -> fp16 SD folder")
    p.add_argument("data", type=Path, help="the emoji set (sdstudio data emoji OUT)")
    p.add_argument("--out", type=Path, required=True, help="run folder: vae/, clip/, ldm/, model/")
    p.add_argument("--vae-minutes", type=float, default=None, help="wall-clock budget of the VAE stage")
    p.add_argument("--clip-minutes", type=float, default=None)
    p.add_argument("--ldm-minutes", type=float, default=None)
    p.add_argument("--stages", default="vae,clip,ldm", help="comma list of stages to run (others must exist)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_default)

    p = sub.add_parser("assemble", help="combine vae/clip/ldm finals into an fp16 Stable Diffusion folder")
    p.add_argument("run", type=Path, help="folder holding vae/, clip/ and ldm/ runs")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fp32", action="store_true")
    p.set_defaults(func=_assemble)

    p = sub.add_parser("eval", help="mini-CLIP retrieval, Frechet distance and prompt grid for an SD folder")
    p.add_argument("model", type=Path, help="diffusers SD folder with miniclip/ (e.g. the default model)")
    p.add_argument(
        "--data", type=Path, required=True, help="the emoji set (captions.jsonl with a test split)"
    )
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--n", type=int, default=200)
    p.add_argument(
        "--judge", type=Path, default=None, help="an independently trained mini-CLIP (train clip's final/)"
    )
    p.set_defaults(func=_eval)


def _ddpm(args: argparse.Namespace) -> int:
    from sdstudio.training.ddpm import DDPMConfig, train_ddpm

    cfg = DDPMConfig(
        image_size=args.size,
        block_out_channels=args.channels,
        norm_num_groups=_groups(args.channels),
        schedule=args.schedule,
        prediction=args.prediction,
        condition=args.condition,
        condition_dropout=args.condition_dropout,
        text_encoder=args.text_encoder,
        ema_decay=args.ema,
    )
    res = train_ddpm(_data(args, args.size), _loop_config(args), cfg)
    print(f"ddpm: {res.steps} steps in {res.seconds:.0f}s -> {args.out / 'final'}")
    return 0


def _vae(args: argparse.Namespace) -> int:
    from sdstudio.training.vae import VAEConfig, train_vae

    cfg = VAEConfig(
        block_out_channels=args.channels,
        norm_num_groups=_groups(args.channels),
        layers_per_block=args.layers,
        image_size=args.size,
        recon=args.recon,
        kl_weight=args.kl_weight,
    )
    res = train_vae(_data(args, args.size), _loop_config(args), cfg)
    print(f"vae: {res.steps} steps in {res.seconds:.0f}s -> {args.out / 'final' / 'vae'}")
    return 0


def _clip(args: argparse.Namespace) -> int:
    from sdstudio.training.miniclip import MiniCLIPConfig, train_clip

    cfg = MiniCLIPConfig(
        hidden=args.hidden, layers=args.layers, embed_dim=args.embed_dim, image_size=args.size
    )
    res = train_clip(_data(args, args.size), _loop_config(args), cfg)
    print(f"clip: {res.steps} steps in {res.seconds:.0f}s -> {args.out / 'final'}")
    return 0


def _ldm(args: argparse.Namespace) -> int:
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    from sdstudio.training.ldm import LDMConfig, train_ldm

    for path, what in ((args.vae, "--vae"), (args.text_encoder, "--text-encoder")):
        if not (path / "config.json").is_file():
            raise SDStudioError(
                f"{what} {path} is not a model folder (no config.json)", field=what.lstrip("-")
            )
    vae = AutoencoderKL.from_pretrained(str(args.vae), torch_dtype=torch.float32, local_files_only=True)
    text = CLIPTextModel.from_pretrained(str(args.text_encoder), dtype=torch.float32, local_files_only=True)
    cfg = LDMConfig(
        block_out_channels=args.channels,
        norm_num_groups=_groups(args.channels),
        schedule=args.schedule,
        prediction=args.prediction,
        caption_dropout=args.caption_dropout,
        ema_decay=args.ema,
    )
    res = train_ldm(_data(args, vae.config.sample_size), _loop_config(args), vae, text, cfg)
    print(f"ldm: {res.steps} steps in {res.seconds:.0f}s -> {args.out / 'final'}")
    return 0


def _default(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from sdstudio.training.data import load_image_folder
    from sdstudio.training.recipe import DefaultRecipe, train_default_model

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if not stages or set(stages) - {"vae", "clip", "ldm"}:
        raise SDStudioError(
            f"stages must be a comma list of vae, clip, ldm; got {args.stages!r}", field="stages"
        )
    r = DefaultRecipe(mixed_precision=args.mixed_precision)

    def budget(plan, minutes):
        return replace(plan, time_budget_s=minutes * 60 if minutes else None)

    r = replace(
        r,
        vae_plan=budget(r.vae_plan, args.vae_minutes),
        clip_plan=budget(r.clip_plan, args.clip_minutes),
        ldm_plan=budget(r.ldm_plan, args.ldm_minutes),
    )
    data = load_image_folder(args.data, r.vae.image_size, split="train")
    train_default_model(data, args.out, r, resume=args.resume, progress=not args.no_progress, stages=stages)
    return 0


def _assemble(args: argparse.Namespace) -> int:
    import torch

    from sdstudio.training.export import assemble_sd_folder, folder_size

    run = args.run
    parts = [run / "vae" / "final" / "vae", run / "clip" / "final", run / "ldm" / "final" / "unet"]
    for part in parts:
        if not part.is_dir():
            raise SDStudioError(f"missing trained part {part}", field="run")
    dtype = torch.float32 if args.fp32 else torch.float16
    out = assemble_sd_folder(*parts, run / "ldm" / "final" / "scheduler", args.out, dtype=dtype)
    print(f"wrote {out} ({folder_size(out) / 1e6:.1f} MB)")
    return 0


def _eval(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from sdstudio.training.evaluate import evaluate_model

    if not (args.model / "miniclip" / "miniclip.json").is_file():
        raise SDStudioError(f"{args.model} has no miniclip/ folder to score with", field="model")
    if args.judge is not None and not (args.judge / "miniclip.json").is_file():
        raise SDStudioError(
            f"--judge {args.judge} is not a mini-CLIP folder (no miniclip.json)", field="judge"
        )
    report = evaluate_model(
        args.model, args.data, args.out, args.steps, args.guidance, args.n, judge=args.judge
    )
    print(json.dumps(asdict(report), indent=2))
    return 0


def _lora(args: argparse.Namespace) -> int:
    import torch

    from sdstudio.models.loader import load_model
    from sdstudio.training.lora import ATTENTION, CONVS, EXTRA, LoraConfig, train_lora

    model = load_model(args.model, dtype=torch.float32, backend="torch")  # trained weights: no compiled copy
    size = args.size or model.native_size
    data = _data(args, size)
    name = args.name or args.out.name
    cfg = LoraConfig(
        rank=args.rank,
        alpha=float(args.alpha if args.alpha is not None else args.rank),
        targets=ATTENTION
        + (EXTRA if args.targets != "attention" else ())
        + (CONVS if args.targets == "all" else ()),
        caption_dropout=args.caption_dropout,
        name=name,
        preview_prompts=tuple(args.preview or [c[0] for c in data.captions[:4]]),
        preview_steps=args.preview_steps,
        size=size,
    )
    result = train_lora(model, data, _loop_config(args), cfg)
    print(
        f"{result.steps} steps in {result.seconds:.0f} s; LoRA: {args.out / 'final' / (name + '.safetensors')}"
    )
    print(f"copy it to models/Lora/ and use <lora:{name}:1> in a prompt")
    return 0


def _taesd(args: argparse.Namespace) -> int:
    import torch

    from sdstudio.models.loader import load_model
    from sdstudio.training.taesd import TAESDConfig, distillation_images, train_taesd

    if args.channels < 1 or args.blocks < 1:
        raise SDStudioError("--channels and --blocks must be >= 1", field="channels")
    model = load_model(args.model, dtype=torch.float32, backend="torch")  # trained weights: no compiled copy
    data, source = distillation_images(
        model, args.data, size=args.size or None, generate=args.generate, seed=args.seed,
        split=None if args.split == "all" else args.split,
    )  # fmt: skip
    print(f"taesd: distilling {model.name}'s VAE on {source}")
    cfg = TAESDConfig(
        channels=args.channels,
        blocks=args.blocks,
        l1_weight=args.l1_weight,
        encoder_weight=0.0 if args.no_encoder else 1.0,
        ema_decay=args.ema,
        half=args.half,
    )
    res = train_taesd(model, data, _loop_config(args), cfg)
    out = args.out / "final" / "taesd"
    print(f"taesd: {res.steps} steps in {res.seconds:.0f}s -> {out}")
    print(f"copy it into the model folder as taesd/ (or pass --tiny-vae {out}); --fast then decodes with it")
    return 0
