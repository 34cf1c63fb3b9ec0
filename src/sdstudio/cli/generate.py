"""``sdstudio txt2img``: the classic web UI's knobs on the command line.

Shared helpers (``add_generation_args``, ``request_from_args``, ``load_model_from_args``,
``run_and_save``) are used by the image-to-image verbs too.
"""

from __future__ import annotations

import argparse

from sdstudio.config import GenerationRequest


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=None, help="diffusers folder, .safetensors or .ckpt (default: embedded model)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="auto = bf16 on CPUs that support it, fp16 on CUDA, else fp32",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--prediction-type",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="override the detected prediction type (SD 2.x 768 models use v_prediction)",
    )


def add_generation_args(p: argparse.ArgumentParser, default_size: int | None = None) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (omit with --from-png)")
    p.add_argument("--negative-prompt", default="", help="what the image should not contain")
    p.add_argument(
        "--width", type=int, default=default_size, help="multiple of 8 (default: the model's native size)"
    )
    p.add_argument(
        "--height", type=int, default=default_size, help="multiple of 8 (default: the model's native size)"
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        default=7.0,
        help="Classifier Free Guidance Scale: how strongly the image should follow the prompt",
    )
    p.add_argument("--seed", type=int, default=-1, help="-1 (default) = random; image i uses seed+i")
    p.add_argument("--subseed", type=int, default=-1, help="variation seed (-1 = random)")
    p.add_argument("--subseed-strength", type=float, default=0.0, help="variation strength in [0, 1]")
    p.add_argument("--seed-resize-from-w", type=int, default=0)
    p.add_argument("--seed-resize-from-h", type=int, default=0)
    p.add_argument("--batch-count", type=int, default=1, help="how many batches of images to generate")
    p.add_argument("--batch-size", type=int, default=1, help="how many images are in a batch (memory-hungry)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument(
        "--sampler", default="Euler a", help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M', 'LMS' (k_lms)"
    )
    p.add_argument(
        "--scheduler",
        default="Automatic",
        help="schedule type: automatic, uniform, karras, exponential, polyexponential, sgm_uniform",
    )
    p.add_argument(
        "--clip-skip", type=int, default=1, help="use the text encoder's output N-1 layers before the last"
    )
    p.add_argument("--eta", type=float, default=None, help="noise multiplier for ancestral/DDIM samplers")
    p.add_argument("--tiling", action="store_true", help="seamless tiling: the image wraps around at its edges")
    p.add_argument(
        "--outdir", default=None, help="folder for the images (default outputs/<kind>-images/<date>/)"
    )
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"])
    p.add_argument("--from-png", default=None, metavar="FILE", help="regenerate from a PNG's infotext")


def load_model_from_args(args):
    from sdstudio.models.loader import load_model

    return load_model(
        args.model, device=args.device, precision=args.precision, prediction_type=args.prediction_type
    )


def native_size(model) -> int:
    return int(model.unet.config.sample_size) * model.vae_scale_factor


def request_from_args(args, model, **extra) -> GenerationRequest:
    """Build a GenerationRequest from parsed CLI args (or from ``--from-png``)."""
    from sdstudio.errors import SDStudioError

    size = native_size(model)
    request = GenerationRequest(
        prompt=args.prompt or "",
        negative_prompt=args.negative_prompt,
        width=args.width or size,
        height=args.height or size,
        cfg_scale=args.cfg_scale,
        steps=args.steps,
        sampler_name=args.sampler,
        scheduler=args.scheduler,
        seed=args.seed,
        subseed=args.subseed,
        subseed_strength=args.subseed_strength,
        seed_resize_from_w=args.seed_resize_from_w,
        seed_resize_from_h=args.seed_resize_from_h,
        batch_size=args.batch_size,
        n_iter=args.batch_count,
        clip_skip=args.clip_skip,
        eta=args.eta,
        tiling=args.tiling,
        **extra,
    )
    if args.from_png:
        from sdstudio.infotext import request_from_infotext
        from sdstudio.runtime.outputs import read_infotext

        text = read_infotext(args.from_png)
        if not text:
            raise SDStudioError(
                f"{args.from_png} carries no generation parameters (no 'parameters' text chunk)"
            )
        request = request_from_infotext(text, request.replace(n_iter=1, batch_size=1))
    elif not args.prompt and args.prompt != "":
        raise SDStudioError("give a prompt, or --from-png FILE")
    from sdstudio.sampling import get_sampler

    get_sampler(request.sampler_name).resolve_schedule(request.scheduler)  # fail before loading work
    return request.validate()


def run_and_save(pipeline, model, request, args, kind: str, **pipeline_kwargs) -> int:
    """Run ``pipeline`` with a tqdm progress bar, save each image as it finishes, print its path."""
    from tqdm import tqdm

    from sdstudio.runtime.outputs import save_image

    bar = tqdm(total=None, unit="step", desc=kind, dynamic_ncols=True)

    def progress(info) -> None:
        bar.total = info.job_steps
        bar.n = info.job_step
        bar.set_postfix_str(f"batch {info.batch_index + 1}/{info.batch_count}", refresh=False)
        bar.refresh()

    def on_image(item) -> None:
        path = save_image(
            item.image, item.infotext, "outputs", item.seed, kind=kind, ext=args.format, folder=args.outdir
        )
        tqdm.write(str(path))

    try:
        pipeline(model, request, progress=progress, on_image=on_image, **pipeline_kwargs)
    finally:
        bar.close()
    return 0


def _txt2img(args) -> int:
    from sdstudio.cli.edit import hires_from_args
    from sdstudio.pipelines import txt2img

    model = load_model_from_args(args)
    request = request_from_args(args, model, hires=hires_from_args(args))
    return run_and_save(txt2img, model, request, args, "txt2img")


def register(sub) -> None:
    p = sub.add_parser(
        "txt2img",
        help="generate images from a prompt",
        description="Text-to-image with the classic Stable Diffusion knobs; prints each PNG path.",
    )
    add_generation_args(p)
    add_model_args(p)
    from sdstudio.cli.edit import add_hires_args

    add_hires_args(p)
    p.set_defaults(func=_txt2img)
