"""``sdstudio img2img | inpaint | outpaint``: the image-to-image verbs (A1111's img2img tab).

Each verb takes the txt2img knobs (``cli.common.add_generation_args``) plus its own, shows a
progress bar and prints the path of every PNG it writes (``outputs/img2img-images/<date>/``).
``--from-png`` reproduces an image from its infotext, mask and hires settings included; the
init image must be given again (its ``Init image hash`` is checked).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.infotext import FILL_NAMES, edit_fields_from_infotext

RESIZE_NAMES = {"just-resize": 0, "crop-and-resize": 1, "resize-and-fill": 2}


def _choice(table: dict[str, int], what: str):
    """argparse type accepting a name from ``table`` or its number (A1111 API index)."""

    def parse(text: str) -> int:
        key = text.strip().lower().replace(" ", "-").replace("_", "-")
        if key in table:
            return table[key]
        if key.isdigit() and int(key) in table.values():
            return int(key)
        raise argparse.ArgumentTypeError(f"{what} must be one of {', '.join(table)} (or 0-{len(table) - 1})")

    return parse


def add_img2img_args(p: argparse.ArgumentParser, *, multiple_inits: bool = True) -> None:
    """Init image, strength and resize mode (A1111 img2img fields)."""
    p.add_argument(
        "--init",
        "--init-image",
        dest="init",
        required=True,
        action="append" if multiple_inits else "store",
        metavar="IMAGE",
        help="init image (repeat for one per batch position)" if multiple_inits else "image to extend",
    )
    p.add_argument(
        "--denoising-strength",
        "--strength",
        dest="denoising_strength",
        type=float,
        default=None,
        help="0 returns the input re-encoded, 1 ignores it (default 0.75; outpaint 0.8)",
    )
    if not multiple_inits:  # outpaint: the canvas size follows the image
        return
    p.add_argument(
        "--resize-mode",
        type=_choice(RESIZE_NAMES, "--resize-mode"),
        default=0,
        help="just-resize (default), crop-and-resize, resize-and-fill",
    )


def add_mask_args(p: argparse.ArgumentParser, *, with_mask: bool = True) -> None:
    """Mask image and A1111's inpainting knobs."""
    if with_mask:
        p.add_argument("--mask", required=True, metavar="IMAGE", help="mask image, white = repaint")
        p.add_argument("--mask-invert", action="store_true", help="repaint what is NOT white")
        p.add_argument(
            "--only-masked",
            action="store_true",
            help="inpaint only the masked area's box at full resolution, then paste it back",
        )
        p.add_argument("--only-masked-padding", type=int, default=32, help="pixels around the mask's box")
    p.add_argument("--mask-blur", type=int, default=4, help="Gaussian blur of the mask edge in pixels")
    p.add_argument(
        "--inpainting-fill",
        type=_choice(FILL_NAMES, "--inpainting-fill"),
        default=1,
        help="masked content: fill, original (default), latent-noise, latent-nothing",
    )


def _request(args, defaults, init, **fields):
    """The request for an edit verb: CLI flags (or --from-png), size defaulting to the init image's."""
    from sdstudio.cli.common import request_from_args

    request = request_from_args(args, defaults, **fields)
    if args.from_png:
        from sdstudio.infotext import parse_infotext
        from sdstudio.runtime.outputs import read_infotext

        parsed = parse_infotext(read_infotext(args.from_png))
        request = request.replace(**edit_fields_from_infotext(parsed))
        _check_init_hash(parsed, init)
    elif args.width is None and args.height is None and init is not None:
        request = request.replace(width=_size8(init.width), height=_size8(init.height))
    return request


def _check_init_hash(parsed: dict[str, Any], init) -> None:
    from sdstudio.pipelines.image_ops import image_hash

    recorded = parsed.get("Init image hash")
    if recorded and init is not None and image_hash(init) != recorded:
        print("sdstudio: warning: --init differs from the image the PNG was made from", file=sys.stderr)


def _size8(pixels: int) -> int:
    return max(64, pixels // 8 * 8)


def _mask_fields(args) -> dict[str, Any]:
    fields = {"mask_blur": args.mask_blur, "inpainting_fill": args.inpainting_fill}
    if hasattr(args, "mask"):
        fields.update(
            inpainting_mask_invert=args.mask_invert,
            inpaint_full_res=args.only_masked,
            inpaint_full_res_padding=args.only_masked_padding,
        )
    return fields


def _run(args, kind: str) -> int:
    from sdstudio.cli.common import build_then_load, check_args, run_and_save
    from sdstudio.cli.remote import try_remote

    done = try_remote(args, kind)  # a running studio answers in about a second
    if done is not None:
        return done

    check_args(args)  # bad flags fail before torch loads or any image is read
    from sdstudio.pipelines import image_ops as ops

    inits = args.init if isinstance(args.init, list) else [args.init]
    images = tuple(ops.load_image(path, field="--init") for path in inits)
    fields: dict[str, Any] = {
        "denoising_strength": args.denoising_strength,
        "resize_mode": getattr(args, "resize_mode", 0),
        "init_images": images,
    }
    if kind != "img2img":
        fields.update(_mask_fields(args))
    if kind == "inpaint":
        fields["mask"] = ops.load_image(args.mask, field="--mask")
    if kind == "outpaint":
        sides = _sides(args)
        fields["outpaint"] = (sides["left"], sides["right"], sides["up"], sides["down"])
    model, request = build_then_load(args, lambda d: _request(args, d, images[0], **fields))
    return run_and_save(model, request, args)


def _sides(args) -> dict[str, int]:
    """Outpaint sides from the flags, or from the infotext's ``Outpaint`` key with --from-png."""
    sides = {"left": args.left, "right": args.right, "up": args.up, "down": args.down}
    if args.from_png and not any(sides.values()):
        from sdstudio.infotext import parse_infotext
        from sdstudio.runtime.outputs import read_infotext

        recorded = parse_infotext(read_infotext(args.from_png)).get("Outpaint", "")
        sides.update({k: int(v) for k, v in (part.split("=") for part in recorded.split()) if k in sides})
    if min(sides.values()) < 0 or not any(sides.values()):
        raise SDStudioError("outpaint needs --left/--right/--up/--down pixels (>= 0, at least one > 0)")
    return sides


def _img2img(args) -> int:
    return _run(args, "img2img")


def _inpaint(args) -> int:
    return _run(args, "inpaint")


def _outpaint(args) -> int:
    _sides(args)  # fail before loading the model
    return _run(args, "outpaint")


def register(sub) -> None:
    from sdstudio.cli.common import add_generation_args, add_model_args
    from sdstudio.cli.remote import add_remote_args

    p = sub.add_parser(
        "img2img",
        help="redraw an init image guided by a prompt",
        description="Image-to-image: --denoising-strength 0 keeps the image, 1 ignores it.",
    )
    add_generation_args(p)
    add_img2img_args(p)
    add_model_args(p)
    add_remote_args(p)
    p.set_defaults(func=_img2img)

    p = sub.add_parser(
        "inpaint",
        help="repaint the white area of a mask",
        description="Inpainting with a mask (white = repaint); --only-masked works on the mask's box.",
    )
    add_generation_args(p)
    add_img2img_args(p)
    add_mask_args(p)
    add_model_args(p)
    add_remote_args(p)
    p.set_defaults(func=_inpaint)

    p = sub.add_parser(
        "outpaint",
        help="extend an image by N pixels per side",
        description="Outpainting: the canvas grows by --left/--right/--up/--down pixels and the new area is generated.",
    )
    add_generation_args(p)
    add_img2img_args(p, multiple_inits=False)
    add_mask_args(p, with_mask=False)
    p.add_argument("--left", type=int, default=0, help="pixels to add on the left")
    p.add_argument("--right", type=int, default=0, help="pixels to add on the right")
    p.add_argument("--up", "--top", dest="up", type=int, default=0, help="pixels to add at the top")
    p.add_argument("--down", "--bottom", dest="down", type=int, default=0, help="pixels to add at the bottom")
    add_model_args(p)
    add_remote_args(p)
    p.set_defaults(func=_outpaint)
