"""``sdstudio txt2img``: the classic web UI's knobs on the command line (prints each PNG path)."""

from __future__ import annotations

from sdstudio.cli.common import (
    add_generation_args,
    add_hires_args,
    add_model_args,
    build_then_load,
    hires_from_args,
    request_from_args,
    run_and_save,
)


def _txt2img(args) -> int:
    model, request = build_then_load(args, lambda d: request_from_args(args, d, hires=hires_from_args(args)))
    return run_and_save(model, request, args)


def register(sub) -> None:
    p = sub.add_parser(
        "txt2img",
        help="generate images from a prompt",
        description="Text-to-image with the classic Stable Diffusion knobs; prints each PNG path.",
    )
    add_generation_args(p)
    add_model_args(p)
    add_hires_args(p)
    p.set_defaults(func=_txt2img)
