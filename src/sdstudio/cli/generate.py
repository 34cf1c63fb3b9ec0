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
    from sdstudio.cli.remote import try_remote

    done = try_remote(args)  # a running studio answers in about a second
    if done is not None:
        return done
    model, request = build_then_load(args, lambda d: request_from_args(args, d, hires=hires_from_args(args)))
    return run_and_save(model, request, args)


def register(sub) -> None:
    p = sub.add_parser(
        "txt2img",
        help="generate images from a prompt",
        description="Text-to-image with the classic Stable Diffusion knobs; prints each PNG path. When "
        "a studio (`sdstudio serve`) answers at --server, the job runs there; --local runs it here.",
    )
    add_generation_args(p)
    add_model_args(p)
    add_hires_args(p)
    from sdstudio.cli.remote import add_remote_args

    add_remote_args(p)
    p.set_defaults(func=_txt2img)
