"""A1111 infotext: the PNG ``parameters`` text chunk (``modules/processing.py`` create_infotext,
``modules/infotext_utils.py`` parse_generation_parameters). See REFERENCE.md §3.

Layout: ``{prompt}\\nNegative prompt: {negative}\\n{params}``; params are ``key: value`` pairs joined
by ``", "`` in A1111's order, empty ones omitted; values containing ``,``, ``:`` or a newline are
written as JSON strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from sdstudio import __version__
from sdstudio.fields import from_infotext, infotext_params

# Keys A1111 writes before the free-form "extra" parameters, in its order.
PARAM_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Init image hash",
    "RNG",
    "Tiling",
)

_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


def quote(value: Any) -> str:
    """A1111 ``infotext_utils.quote``: JSON-quote values that contain ``,``, ``:`` or newlines."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Assemble an infotext from prompt, negative prompt and an ordered mapping of parameters."""
    ordered = [k for k in PARAM_ORDER if k in params] + [
        k for k in params if k not in PARAM_ORDER and k != "Version"
    ]
    if "Version" in params:
        ordered.append("Version")
    pairs = ", ".join(
        f"{k}: {quote(params[k])}" for k in ordered if params[k] is not None and params[k] != ""
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{pairs}"


def generation_params(
    request,
    *,
    seed: int,
    subseed: int,
    model=None,
    extra: Mapping[str, Any] | None = None,
    schedule_type: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> dict:
    """The A1111 parameter mapping for one image of ``request`` (a GenerationRequest)."""
    p: dict[str, Any] = infotext_params(request)  # the plain knobs (steps, CFG scale, clip skip, ...)
    p.update(
        {
            "Sampler": request.sampler_name,
            "Schedule type": schedule_type
            or (request.scheduler if request.scheduler != "Automatic" else None),
            "Seed": seed,  # this image's seed (seed + index)
            "Size": f"{width or request.width}x{height or request.height}",
            "Model hash": model.model_hash or None if model is not None else None,
            "Model": model.name or None if model is not None else None,
            "VAE hash": model.vae_hash or None if model is not None else None,
            "VAE": model.vae_name or None if model is not None else None,
            "Variation seed": subseed if request.subseed_strength > 0 else None,
            "Seed resize from": (
                f"{request.seed_resize_from_w}x{request.seed_resize_from_h}"
                if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0
                else None
            ),
            "Denoising strength": _num(request.denoising_strength)
            if request.denoising_strength is not None
            else None,
            "RNG": "CPU",
            "Backend": getattr(model, "backend_label", None) if model is not None else None,
        }
    )
    p.update(request.extra or {})
    p.update(extra or {})
    p["Version"] = f"sdstudio {__version__}"
    return p


def create_infotext(
    request,
    *,
    seed: int,
    subseed: int,
    model=None,
    extra: Mapping[str, Any] | None = None,
    schedule_type: str | None = None,
    prompt: str | None = None,
    negative_prompt: str | None = None,
    width: int | None = None,
    height: int | None = None,
) -> str:
    """Infotext for one image of a job, exactly in A1111's format."""
    params = generation_params(
        request,
        seed=seed,
        subseed=subseed,
        model=model,
        extra=extra,
        schedule_type=schedule_type,
        width=width,
        height=height,
    )
    return format_infotext(
        request.prompt if prompt is None else prompt,
        request.negative_prompt if negative_prompt is None else negative_prompt,
        params,
    )


def _num(value: float | None) -> Any:
    if value is None:
        return None
    value = float(value)
    return int(value) if value.is_integer() else value


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse an infotext back into a dict: "Prompt", "Negative prompt" and every ``key: value``.

    Mirrors A1111 ``parse_generation_parameters``: the last line holding >= 3 params is the
    parameter line; "Size" also yields "Size-1"/"Size-2"; JSON-quoted values are unquoted.
    """
    *lines, last = (text or "").strip().split("\n")
    if len(_RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt_lines, negative_lines, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt_lines), "Negative prompt": "\n".join(negative_lines)}
    for key, value in _RE_PARAM.findall(last):
        value = value.strip()
        if value[:1] == '"' and value[-1:] == '"':
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        result[key.strip()] = value
        m = _RE_SIZE.match(value) if isinstance(value, str) else None
        if m is not None:
            result[f"{key.strip()}-1"], result[f"{key.strip()}-2"] = m.group(1), m.group(2)
    return result


FILL_NAMES = {"fill": 0, "original": 1, "latent-noise": 2, "latent-nothing": 3}


def edit_fields_from_infotext(fields: dict[str, Any]) -> dict[str, Any]:
    """GenerationRequest changes for the image-to-image and hires keys of a parsed infotext (A1111 names)."""
    changes: dict[str, Any] = {}
    if "Mask blur" in fields:
        changes["mask_blur"] = int(fields["Mask blur"])
    if fields.get("Inpaint area") == "Only masked":
        changes["inpaint_full_res"] = True
    if "Masked area padding" in fields:
        changes["inpaint_full_res_padding"] = int(fields["Masked area padding"])
    if "Masked content" in fields:
        changes["inpainting_fill"] = FILL_NAMES[str(fields["Masked content"]).replace(" ", "-")]
    if fields.get("Mask mode") == "Inpaint not masked":
        changes["inpainting_mask_invert"] = True
    if "Hires upscaler" in fields:
        changes["hires"] = _hires_from_fields(fields)
    return changes


def _hires_from_fields(fields: dict[str, Any]):
    from sdstudio.config import HiresSettings

    rx, ry = (int(v) for v in str(fields.get("Hires resize", "0x0")).split("x"))
    return HiresSettings(
        scale=float(fields.get("Hires upscale", 2.0)),
        upscaler=fields["Hires upscaler"],
        second_pass_steps=int(fields.get("Hires steps", 0)),
        denoising_strength=float(fields.get("Denoising strength", 0.7)),
        resize_x=rx,
        resize_y=ry,
        sampler=fields.get("Hires sampler", ""),
        prompt=fields.get("Hires prompt", ""),
        negative_prompt=fields.get("Hires negative prompt", ""),
    )


def request_from_infotext(text: str, base=None):
    """A GenerationRequest reproducing the image an infotext describes (``--from-png``)."""
    from sdstudio.config import GenerationRequest

    f = parse_infotext(text)
    req = base or GenerationRequest()
    changes: dict[str, Any] = {"prompt": f["Prompt"], "negative_prompt": f["Negative prompt"]}
    changes.update(from_infotext(f))
    conv = {
        "Sampler": ("sampler_name", str),
        "Schedule type": ("scheduler", str),
        "Variation seed": ("subseed", int),
        "Denoising strength": ("denoising_strength", float),
    }
    for key, (name, cast) in conv.items():
        if key in f:
            changes[name] = cast(f[key])
    if "Size-1" in f:
        changes["width"], changes["height"] = int(f["Size-1"]), int(f["Size-2"])
    if "Seed resize from-1" in f:
        changes["seed_resize_from_w"], changes["seed_resize_from_h"] = (
            int(f["Seed resize from-1"]),
            int(f["Seed resize from-2"]),
        )
    changes.update(edit_fields_from_infotext(f))
    return req.replace(**changes)
