"""What every generating verb shares: model and generation flags, hires flags, the request built
from them (or from ``--from-png``) and ``run_and_save``. Images are made by the runtime's
:class:`~sdstudio.runtime.service.ImageService`, as in the server: saved under ``outputs/`` and
recorded in its history database, so they are in the gallery at once (also while a server runs).
"""

from __future__ import annotations

import argparse

from sdstudio.config import BACKENDS, GenerationRequest


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    """``--backend auto|torch|openvino`` (models.loader.load_model's ``backend``)."""
    p.add_argument(
        "--backend",
        default=None,
        choices=BACKENDS,
        help="what runs the UNet and VAE decoder: auto (default, or $SDSTUDIO_BACKEND: openvino on a CPU "
        "where it is installed, else torch), torch, or openvino (same weights, converted once per "
        "checkpoint and cached)",
    )


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
    add_backend_arg(p)
    p.add_argument(
        "--prediction-type",
        default=None,
        choices=["epsilon", "v_prediction"],
        help="override the detected prediction type (SD 2.x 768 models use v_prediction)",
    )
    p.add_argument(
        "--tiny-vae",
        default=None,
        metavar="FOLDER",
        help="tiny VAE (TAESD AutoencoderTiny folder) that --fast decodes with (default: the model folder's taesd/)",
    )
    from sdstudio.cli.networks import add_network_args

    add_network_args(p)


def add_generation_args(p: argparse.ArgumentParser, default_size: int | None = None) -> None:
    """The prompt, every plain knob of ``sdstudio.fields.KNOBS`` and the flags with their own shapes."""
    from sdstudio.fields import KNOBS

    p.add_argument("prompt", nargs="?", default=None, help="the prompt (omit with --from-png)")
    for knob in KNOBS:  # default None: the request's (or the model's) default applies
        if knob.parse is bool or knob.name in ("tiling", "fast"):
            p.add_argument(
                knob.cli, dest=knob.name, action="store_const", const=True, default=None, help=knob.help
            )
        else:
            p.add_argument(knob.cli, dest=knob.name, type=knob.parse, default=None, help=knob.help)
    p.add_argument(
        "--width", type=int, default=default_size, help="multiple of 8 (default: the model's native size)"
    )
    p.add_argument(
        "--height", type=int, default=default_size, help="multiple of 8 (default: the model's native size)"
    )
    p.add_argument("--seed-resize-from-w", type=int, default=0)
    p.add_argument("--seed-resize-from-h", type=int, default=0)
    p.add_argument(
        "--sampler",
        default=None,
        help="A1111 sampler name, e.g. 'Euler a', 'DPM++ 2M', 'LMS' (k_lms); default: the model's, else Euler a",
    )
    p.add_argument(
        "--scheduler",
        default="Automatic",
        help="schedule type: automatic, uniform, karras, exponential, polyexponential, sgm_uniform",
    )
    p.add_argument(
        "--outdir", default=None, help="folder for the images (default outputs/<kind>-images/<date>/)"
    )
    p.add_argument(
        "--no-history", action="store_true", help="do not record the images in outputs/history.sqlite3"
    )
    p.add_argument("--format", default="png", choices=["png", "jpg", "webp"])
    p.add_argument("--from-png", default=None, metavar="FILE", help="regenerate from a PNG's infotext")


def load_model_from_args(args):
    from sdstudio.cli.networks import use_vae, vae_for
    from sdstudio.models.loader import load_model

    vae = vae_for(args)  # a missing VAE fails before loading
    recorded_backend(args)
    model = load_model(
        args.model, device=args.device, precision=args.precision, prediction_type=args.prediction_type,
        backend=args.backend, tiny_vae_path=args.tiny_vae,
    )  # fmt: skip
    use_vae(model, vae)
    return model


def recorded_backend(args) -> None:
    """``--from-png`` of an image made on OpenVINO: load with the backend, precision and thread count its
    infotext records ("Backend: OpenVINO bf16, 2 threads?"), unless ``--backend`` or ``--precision``
    say otherwise, so the same pixels come back (bf16 results depend on the thread count)."""
    import re

    if not getattr(args, "from_png", None) or args.backend not in (None, "auto"):
        return
    from sdstudio.infotext import parse_infotext
    from sdstudio.runtime.outputs import read_infotext

    found = re.fullmatch(
        r"OpenVINO (\w+), (\d+) threads?",
        str(parse_infotext(read_infotext(args.from_png) or "").get("Backend", "")),
    )
    if found is None:
        return
    import torch

    args.backend = "openvino"
    if args.precision == "auto":
        args.precision = found.group(1)
    torch.set_num_threads(int(found.group(2)))


OUTPUTS = "outputs"  # the CLI's outputs folder, as the server's default --outdir
CLI_DEFAULTS = {"steps": 20, "sampler": "Euler a", "cfg_scale": 7.0}  # when the model declares none


def check_args(args) -> None:
    """Fail on what the flags alone get wrong, before any model is read: a missing --model, what
    :func:`check_flags` checks, and an unknown sampler or schedule."""
    from pathlib import Path

    from sdstudio.errors import SDStudioError

    if args.model and not Path(args.model).exists():
        raise SDStudioError(f"--model: no such file or folder: {args.model}", field="model")
    check_flags(args)
    if args.sampler:  # the sampler table imports torch (sdstudio.sampling), still no model
        from sdstudio.sampling import get_sampler

        get_sampler(args.sampler).resolve_schedule(args.scheduler)


def check_flags(args) -> None:
    """No prompt, and every range :meth:`GenerationRequest.validate` checks (``--width 70``), without
    importing torch."""
    from sdstudio.errors import SDStudioError
    from sdstudio.fields import KNOBS

    if not args.prompt and args.prompt != "" and not args.from_png:
        raise SDStudioError("give a prompt, or --from-png FILE")
    knobs = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name, None) is not None}
    size = 64  # a stand-in where the model's native size will apply; it passes every check
    GenerationRequest(
        **knobs, prompt=args.prompt or "", width=args.width or size, height=args.height or size
    ).validate()


def model_defaults_from_args(args):
    """:class:`~sdstudio.models.sdmodel.ModelDefaults` of --model (else the embedded model) without
    loading it: native size from its configs or its header, steps and sampler from its card."""
    from sdstudio.runtime.manager import ModelManager

    manager = ModelManager(None, default_model=args.model)
    return manager.defaults(manager.current_entry())


def warn_far_size(request: GenerationRequest, defaults, args) -> None:
    """Say so on stderr when --width/--height is far from the model's native size (as the API warns):
    the embedded 64 px model draws noise at 512 px, and slowly."""
    import sys

    from sdstudio.api.convert import size_warnings

    explicit = args.width is not None or args.height is not None
    for warning in size_warnings(request, defaults.size, explicit=explicit):
        print(f"sdstudio: warning: {warning}", file=sys.stderr)


def build_then_load(args, build):
    """``(model, request)``: the flags checked, the request built by ``build(defaults)`` from the model's
    defaults, and only then the model loaded, so a wrong sampler or size never waits for a load. A
    single file whose native size shows only once loaded (.ckpt) has its request built again."""
    import dataclasses

    check_args(args)
    defaults = model_defaults_from_args(args)
    request = build(defaults if defaults.size else dataclasses.replace(defaults, size=64))
    if defaults.size:
        warn_far_size(request, defaults, args)  # before the wait, not after it
    _say_loading(args)
    model = load_model_from_args(args)
    if defaults.size is None:
        defaults = model.defaults
        request = build(defaults)
        warn_far_size(request, defaults, args)
    return model, request


def _say_loading(args) -> None:
    """A line on a terminal's stderr while the model loads (seconds; a checkpoint's first use on a CPU
    also converts it, 1-2 min), so the wait does not look like a hang. Nothing when piped."""
    import sys

    if sys.stderr.isatty():
        what = args.model or "the embedded model"
        print(f"sdstudio: loading {what} (the first use of a checkpoint converts it once)…", file=sys.stderr)


def request_from_args(args, defaults, **extra) -> GenerationRequest:
    """Build a GenerationRequest from parsed CLI args (or from ``--from-png``); ``defaults`` are the
    model's (:func:`model_defaults_from_args`), so this runs before the model loads."""
    from sdstudio.errors import SDStudioError
    from sdstudio.fields import KNOBS

    knobs = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name, None) is not None}
    request = GenerationRequest(
        **{
            "steps": _given(defaults.steps, CLI_DEFAULTS["steps"]),
            "cfg_scale": _given(defaults.cfg_scale, CLI_DEFAULTS["cfg_scale"]),
            **knobs,
        },
        prompt=args.prompt or "",
        width=args.width or defaults.size,
        height=args.height or defaults.size,
        sampler_name=_given(args.sampler, defaults.sampler, CLI_DEFAULTS["sampler"]),
        scheduler=args.scheduler,
        seed_resize_from_w=args.seed_resize_from_w,
        seed_resize_from_h=args.seed_resize_from_h,
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
        from sdstudio.cli.networks import prompt_from_infotext

        request = request.replace(prompt=prompt_from_infotext(text, request.prompt, args))
    elif not args.prompt and args.prompt != "":
        raise SDStudioError("give a prompt, or --from-png FILE")
    from sdstudio.sampling import get_sampler

    get_sampler(request.sampler_name).resolve_schedule(request.scheduler)  # fail before loading work
    return request.validate()


def _given(*values):
    """The first value that is not None (flag, model default, CLI default)."""
    return next(v for v in values if v is not None)


def run_and_save(model, request, args) -> int:
    """Run ``request`` through the image service with a progress bar; print each saved path.

    The bar goes to stderr and disappears when done; paths go to stdout, one per line.
    """
    import sys

    from tqdm import tqdm

    from sdstudio.runtime.history import HistoryStore
    from sdstudio.runtime.service import ImageService

    history = None if args.no_history else HistoryStore(f"{OUTPUTS}/history.sqlite3", OUTPUTS)
    from sdstudio.cli.networks import networks_from_args

    service = ImageService(OUTPUTS, history, save_format=args.format, networks=networks_from_args(args))
    bar = tqdm(total=None, unit="step", desc=request.kind, dynamic_ncols=True, file=sys.stderr, leave=False)

    def progress(info) -> None:
        bar.total = info.job_steps
        bar.n = info.job_step
        bar.set_postfix_str(f"batch {info.batch_index + 1}/{info.batch_count}", refresh=False)
        bar.refresh()

    def on_saved(saved) -> None:
        tqdm.write(str(_shown(saved.path)), file=sys.stdout)

    try:
        service.run(model, request, progress=progress, on_saved=on_saved, folder=args.outdir)
    finally:
        bar.close()
        if history is not None:
            history.close()
    return 0


def _shown(path):
    """A saved path relative to the working folder when it lies below it (as A1111 prints them)."""
    from pathlib import Path

    try:
        return Path(path).relative_to(Path.cwd())
    except ValueError:
        return path


def add_hires_args(p: argparse.ArgumentParser) -> None:
    """Hires fix flags for txt2img (A1111 enable_hr, hr_scale, hr_upscaler, ...)."""
    g = p.add_argument_group("hires fix")
    g.add_argument("--hires", action="store_true", help="enable the hires fix (upscale + second pass)")
    g.add_argument("--hr-scale", type=float, default=2.0, help="upscale factor (default 2)")
    g.add_argument(
        "--hr-upscaler",
        default="Latent",
        help="Latent (default), a 'Latent (...)' mode, Lanczos, Nearest or None; a wrong name fails at "
        "once with the list",
    )
    g.add_argument("--hr-steps", type=int, default=0, help="second-pass steps (0 = same as --steps)")
    g.add_argument("--hr-denoising-strength", type=float, default=0.7, help="second-pass strength")
    g.add_argument("--hr-resize-x", type=int, default=0, help="target width instead of --hr-scale")
    g.add_argument("--hr-resize-y", type=int, default=0, help="target height instead of --hr-scale")
    g.add_argument("--hr-sampler", default="", help="second-pass sampler (default: same)")
    g.add_argument("--hr-prompt", default="", help="second-pass prompt (default: same)")
    g.add_argument("--hr-negative-prompt", default="", help="second-pass negative prompt (default: same)")


def hires_from_args(args: argparse.Namespace):
    """HiresSettings from ``add_hires_args`` flags, or None when ``--hires`` is off."""
    from sdstudio.config import HiresSettings
    from sdstudio.pipelines.hires import check_upscaler

    if not getattr(args, "hires", False):
        return None
    return HiresSettings(
        scale=args.hr_scale,
        upscaler=check_upscaler(args.hr_upscaler),
        second_pass_steps=args.hr_steps,
        denoising_strength=args.hr_denoising_strength,
        resize_x=args.hr_resize_x,
        resize_y=args.hr_resize_y,
        sampler=args.hr_sampler,
        prompt=args.hr_prompt,
        negative_prompt=args.hr_negative_prompt,
    )
