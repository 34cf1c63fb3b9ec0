"""Map A1111 API requests onto :class:`GenerationRequest`, and results back onto A1111 shapes.

Rules (A1111 ``modules/api/api.py`` behaviour, plus sdstudio's honesty about what it cannot do):
- ``sampler_name`` falls back to ``sampler_index`` (default "Euler"), as ``text2imgapi`` does.
- Fields A1111 knows but that do not change the result here (save flags, comments, ...) are
  accepted silently; fields A1111 does not know are accepted and listed in ``warnings``.
- Fields that would change the image in A1111 but are not implemented here (face restoration,
  scripts, refiner, s_churn, ...) give a 422 naming the field, never a silently different image.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sdstudio.api.schemas import Img2ImgRequest, Txt2ImgRequest, _A1111Base
from sdstudio.config import GenerationRequest, HiresSettings, Limits
from sdstudio.errors import SDStudioError
from sdstudio.fields import from_a1111
from sdstudio.models.sdmodel import ModelDefaults

_DATA_URL = re.compile(r"^data:[\w/+.-]+;base64,", re.IGNORECASE)
# override_settings keys that cannot change the image (accepted silently)
_HARMLESS_OPTIONS = {
    "samples_format",
    "samples_save",
    "save_images_add_number",
    "outdir_samples",
    "outdir_txt2img_samples",
    "outdir_img2img_samples",
    "enable_pnginfo",
    "sd_checkpoint_hash",
    "show_progress_every_n_steps",
    "live_previews_enable",
}
NO_CHECKPOINT = (None, "", "None", "Use same checkpoint")


@dataclass
class ConvertedRequest:
    """The one GenerationRequest an A1111 request describes (prepared: images decoded, validated,
    seeds resolved) plus what only the API needs around it."""

    request: GenerationRequest
    model_name: str | None = None
    warnings: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)  # the request echoed (A1111 "parameters")
    vae: str | None = None  # A1111 sd_vae override (Automatic, None, a VAE name); None = the server option
    script: Any = None  # a parsed A1111 script (sdstudio.pipelines.scripts.registry.ScriptCall) or None

    @property
    def kind(self) -> str:
        return self.request.kind


PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")  # what a PNG holds losslessly
FAR_FROM_NATIVE = 2.0  # an explicit size more than 2x off the model's native size gets a warning


def decode_image(data: str, *, field_name: str, limits: Limits) -> Any:
    """Decode a base64 image (with or without a ``data:image/...;base64,`` prefix) to PIL.

    Undecodable text, non-images and images over ``limits.max_image_pixels`` (decompression
    bombs) raise :class:`SDStudioError` naming the field.
    """
    return _load_image(_image_bytes(data, field_name), field_name, limits)


def _image_bytes(data: str, field_name: str) -> bytes:
    """The bytes of a base64 image (with or without a ``data:`` prefix); SDStudioError naming the field."""
    if not isinstance(data, str) or not data.strip():
        raise SDStudioError(
            f"{field_name}: expected a base64-encoded image, got an empty value", field=field_name
        )
    text = _DATA_URL.sub("", data.strip(), count=1)
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise SDStudioError(f"{field_name}: not valid base64", field=field_name) from None


def _header_pixels(raw: bytes) -> int:
    """Width x height from an image file's header, without decoding it (0 when unreadable: the
    decoder reports that)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as image:
            return image.width * image.height
    except Exception:  # noqa: BLE001 - any header the decoder cannot read is its error to report
        return 0


def _load_image(raw: bytes, field_name: str, limits: Limits) -> Any:
    from PIL import Image

    from sdstudio.pipelines.image_ops import load_image

    try:
        image = load_image(raw, field=field_name, max_pixels=limits.max_image_pixels)
    except SDStudioError as exc:  # the API reports every input error as 422
        raise SDStudioError(str(exc), field=exc.field or field_name, status=422) from None
    except Image.DecompressionBombError:  # over PIL's own hard limit: refused before decoding
        raise SDStudioError(
            f"{field_name}: image is too large (at most {limits.max_image_pixels} pixels are allowed)",
            field=field_name,
        ) from None
    if image.mode not in PNG_MODES:  # CMYK/YCbCr JPEGs: RGB now, as the pipeline would; the queue
        image = image.convert("RGB")  # keeps (and the job store writes) every input as PNG
    return image


def encode_png(image: Any, infotext: str | None = None) -> str:
    """Base64 PNG of a PIL image, carrying the infotext as the ``parameters`` chunk (as A1111 does)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def convert(
    req: _A1111Base,
    *,
    limits: Limits,
    kind: str,
    defaults: ModelDefaults | None = None,
    upscalers: Sequence[Any] = (),
) -> ConvertedRequest:
    """Validate an A1111 request and build the prepared :class:`GenerationRequest` it describes.

    ``upscalers``: the installed model upscaler files (:class:`sdstudio.upscale.UpscalerFile`) that
    ``hr_upscaler`` and the SD upscale script may name besides the built-ins.

    Knobs the client left out take the model's defaults where it declares them (``defaults``):
    the native size instead of A1111's 512x512, the card's steps instead of 50 (README: deviations).
    """
    defaults = defaults or ModelDefaults()
    warnings = _unknown_field_warnings(req)
    _refuse_unsupported(req)
    overrides = dict(req.override_settings or {})
    vae = overrides.pop("sd_vae", None) or None  # checked against models/VAE when it is queued
    if vae is not None and not isinstance(vae, str):
        raise SDStudioError("override_settings.sd_vae must be a VAE name", field="sd_vae")
    tome = overrides.pop("token_merging_ratio", None)  # A1111's option, per request
    model_name, clip_skip = _apply_overrides(overrides, warnings)
    sent = req.model_fields_set
    sampler = req.sampler_name or (req.sampler_index if "sampler_index" in sent else None)
    if req.styles:
        warnings.append(f"styles {req.styles} ignored: sdstudio has no prompt-styles database")
    fields = {
        **from_a1111(req),  # the plain knobs (sdstudio.fields.KNOBS)
        "prompt": _extra_network_prompt(req),
        "width": req.width if "width" in sent else defaults.size or req.width,
        "height": req.height if "height" in sent else defaults.size or req.height,
        "steps": req.steps if "steps" in sent else defaults.steps or req.steps,
        "sampler_name": _sampler_name(sampler or defaults.sampler or req.sampler_index),
        "scheduler": _scheduler_name(req.scheduler),
        "seed_resize_from_w": max(0, req.seed_resize_from_w or 0),
        "seed_resize_from_h": max(0, req.seed_resize_from_h or 0),
        "clip_skip": int(req.clip_skip or clip_skip or 1),
        "s_noise": 1.0 if req.s_noise is None else float(req.s_noise),
        "styles": tuple(req.styles or ()),
    }
    if req.token_merging_ratio is None and tome is not None:
        fields["token_merging_ratio"] = _float_option(tome, "token_merging_ratio")
    if isinstance(req, Txt2ImgRequest):
        fields["hires"] = _hires(req, upscalers)
    else:
        assert isinstance(req, Img2ImgRequest)
        fields.update(_img2img_fields(req, limits))
    from sdstudio.pipelines import prepare

    request = prepare(GenerationRequest(**fields), limits)
    _check_native_size(request, defaults.size, limits)
    warnings += size_warnings(request, defaults.size, explicit="width" in sent or "height" in sent)
    script = None
    if req.script_name:  # A1111 scripts: X/Y/Z plot, prompt matrix, SD upscale (unknown -> 422)
        from sdstudio.pipelines.scripts.registry import parse_script

        script = parse_script(req.script_name, req.script_args, kind, request, limits, upscalers=upscalers)
    from sdstudio.runtime.admission import check_work

    check_work(request, script, limits)  # the whole job's work, before it is queued
    return ConvertedRequest(request, model_name, warnings, _echo(req), vae=vae, script=script)


def _check_native_size(request: GenerationRequest, native: int | None, limits: Limits) -> None:
    """With ``limits.max_native_factor`` (``sdstudio serve`` without ``--max-size``: 4), refuse an
    image (or hires target) over that many times the model's native pixels: a 2048x2048 image on a
    256 px model is 64 times its work per step and rarely a usable picture."""
    if not limits.max_native_factor or not native:
        return
    sizes = [("width", request.width, request.height)]
    if request.hires is not None:
        sizes.append(("hr_scale", *request.hires.target_size(request.width, request.height)))
    for field_name, w, h in sizes:
        factor = w * h / (native * native)
        if factor > limits.max_native_factor:
            side = int((limits.max_native_factor * native * native) ** 0.5) // 8 * 8
            raise SDStudioError(
                f"{field_name}: {w}x{h} is {factor:.1f} times the model's native {native}x{native} pixels; "
                f"this server allows {limits.max_native_factor:g} times (about {side}x{side}): start it "
                "with --max-size to allow larger images",
                field=field_name,
            )


def size_warnings(request: GenerationRequest, native: int | None, *, explicit: bool = True) -> list[str]:
    """A plain warning when an explicit size is more than 2x off the model's native resolution."""
    if not native or not explicit:
        return []
    far = [
        f"{name} {value}" for name, value in (("width", request.width), ("height", request.height))
        if not native / FAR_FROM_NATIVE <= value <= native * FAR_FROM_NATIVE
    ]  # fmt: skip
    if not far:
        return []
    message = f"{' and '.join(far)} is far from the model's native {native}x{native} px"
    return [f"{message}: expect repeated or broken compositions (and a slow job)"]


def _img2img_fields(req: Img2ImgRequest, limits: Limits) -> dict[str, Any]:
    """img2img / inpaint / outpaint: decode images and the mask, map the mask fields.

    The mask is passed on unconverted: an RGBA mask's alpha channel is the mask (A1111
    ``create_binary_mask``). Outpainting margins (sdstudio's ``outpaint_*`` fields) give the padded
    canvas as the output size.
    """
    if not req.init_images:
        raise SDStudioError(
            "init_images: at least one base64 image is required for img2img", field="init_images"
        )
    usable = 1 if _outpaint_requested(req) else max(1, min(req.batch_size, limits.max_batch_size))
    if len(req.init_images) > usable:  # refused before any is decoded (A1111: "bad number of images")
        raise SDStudioError(
            f"init_images: {len(req.init_images)} images sent, this request can use at most {usable} "
            "(one for the whole batch, or one per image of the batch: batch_size)",
            field="init_images",
        )
    raws = [
        (f"init_images[{i}]", _image_bytes(data, f"init_images[{i}]"))
        for i, data in enumerate(req.init_images)
    ]
    if req.mask:
        raws.append(("mask", _image_bytes(req.mask, "mask")))
    total, budget = sum(_header_pixels(raw) for _, raw in raws), 2 * limits.max_image_pixels
    if total > budget:  # an image and its mask at the largest size fit; eight of them do not
        raise SDStudioError(
            f"init_images: the images and mask hold {total:,} pixels together; at most {budget:,} "
            "(twice --max-image-pixels) are decoded per request",
            field="init_images",
        )
    decoded = [_load_image(raw, name, limits) for name, raw in raws]
    images, mask = tuple(decoded[: len(req.init_images)]), (decoded[-1] if req.mask else None)
    sides = (req.outpaint_left, req.outpaint_right, req.outpaint_top, req.outpaint_bottom)
    outpaint = None
    if any(sides):
        if any(not isinstance(v, int) or v < 0 for v in sides):
            raise SDStudioError("outpaint margins must be non-negative integers", field="outpaint_left")
        if mask is not None:
            raise SDStudioError(
                "outpaint margins and a mask cannot be combined; send one or the other", field="mask"
            )
        outpaint = sides
    return {
        "init_images": images,
        "mask": mask,
        "outpaint": outpaint,
        "denoising_strength": None if req.denoising_strength is None else float(req.denoising_strength),
        "resize_mode": req.resize_mode,
        "mask_blur": int(req.mask_blur if req.mask_blur is not None else req.mask_blur_x),
        "inpainting_fill": req.inpainting_fill,
        "inpaint_full_res": bool(req.inpaint_full_res) and outpaint is None,
        "inpaint_full_res_padding": req.inpaint_full_res_padding,
        "inpainting_mask_invert": bool(req.inpainting_mask_invert) and outpaint is None,
    }


def _outpaint_requested(req: Img2ImgRequest) -> bool:
    return any((req.outpaint_left, req.outpaint_right, req.outpaint_top, req.outpaint_bottom))


def _hires(req: Txt2ImgRequest, upscalers: Sequence[Any] = ()) -> HiresSettings | None:
    """A1111 hires fix fields -> :class:`HiresSettings` (None when ``enable_hr`` is false); a model
    upscaler named in ``hr_upscaler`` is resolved to its file here."""
    if not req.enable_hr:
        return None
    upscaler, path = req.hr_upscaler or "Latent", ""
    allowed = hires_upscalers()
    found = next((f for f in upscalers if f.name.lower() == upscaler.strip().lower()), None)
    if found is not None:
        upscaler, path = found.name, str(found.path)
    elif allowed and upscaler not in allowed:
        names = ", ".join([*allowed, *(f.name for f in upscalers)])
        raise SDStudioError(
            f"hr_upscaler {upscaler!r} is not available; choose one of: {names}", field="hr_upscaler"
        )
    return HiresSettings(
        scale=float(req.hr_scale),
        upscaler=upscaler,
        upscaler_path=path,
        second_pass_steps=int(req.hr_second_pass_steps or 0),
        denoising_strength=0.7 if req.denoising_strength is None else float(req.denoising_strength),
        resize_x=int(req.hr_resize_x or 0),
        resize_y=int(req.hr_resize_y or 0),
        sampler=_sampler_name(req.hr_sampler_name)
        if req.hr_sampler_name not in (None, "", "Use same sampler")
        else "",
        scheduler=_scheduler_name(req.hr_scheduler)
        if req.hr_scheduler not in (None, "", "Use same scheduler")
        else "",
        prompt=req.hr_prompt or "",
        negative_prompt=req.hr_negative_prompt or "",
    )


def hires_upscalers() -> list[str]:
    """Upscaler names the hires pass implements (``sdstudio.pipelines.hires.UPSCALERS``)."""
    from sdstudio.pipelines.hires import UPSCALERS

    return list(UPSCALERS)


def _sampler_name(name: str | None) -> str:
    """Canonical A1111 sampler name (aliases such as ``k_lms`` accepted); unknown -> 422."""
    from sdstudio.sampling import get_sampler

    return get_sampler(name or "Euler").name


def _scheduler_name(name: str | None) -> str:
    """Canonical schedule type ("karras" / "Karras" / None -> "Automatic")."""
    from sdstudio.sampling import SCHEDULE_TYPES

    if not name:
        return "Automatic"
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    for label in (*SCHEDULE_TYPES, "DDIM"):
        if label.lower().replace(" ", "_") == key:
            return label
    raise SDStudioError(
        f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULE_TYPES)}", field="scheduler"
    )


def _unknown_field_warnings(req: _A1111Base) -> list[str]:
    extra = sorted((req.model_extra or {}).keys())
    return [f"unknown fields ignored: {', '.join(extra)}"] if extra else []


def _refuse_unsupported(req: _A1111Base) -> None:
    """422 for fields that would change the result in A1111 but are not implemented here."""
    checks = [
        ("restore_faces", bool(req.restore_faces), "face restoration is not supported"),
        (
            "alwayson_scripts",
            any(_script_active(v) for v in (req.alwayson_scripts or {}).values()),
            f"always-on scripts are not supported ({', '.join(req.alwayson_scripts or {})})",
        ),
        ("s_churn", bool(req.s_churn), "s_churn is not supported (leave it 0)"),
        (
            "refiner_checkpoint",
            req.refiner_checkpoint not in NO_CHECKPOINT,
            "a refiner checkpoint is not supported",
        ),
        ("firstpass_image", bool(req.firstpass_image), "firstpass_image is not supported"),
    ]
    if isinstance(req, Txt2ImgRequest):
        checks.append(
            (
                "hr_checkpoint_name",
                req.hr_checkpoint_name not in NO_CHECKPOINT,
                "a separate hires checkpoint is not supported",
            )
        )
    if isinstance(req, Img2ImgRequest):
        checks += [
            ("latent_mask", bool(req.latent_mask), "latent_mask is not supported"),
        ]
    for name, bad, message in checks:
        if bad:
            raise SDStudioError(f"{name}: {message}", field=name)


def _script_active(value: Any) -> bool:
    """An always-on script entry with no args (webuiapi sends {"args": []}) changes nothing."""
    if isinstance(value, dict):
        args = value.get("args")
        return bool(args) and args != [False]
    return bool(value)


def _extra_network_prompt(req: _A1111Base) -> str:
    """The prompt; with A1111's ``disable_extra_networks`` its <lora:...> tags are dropped, not applied."""
    if not req.disable_extra_networks:
        return req.prompt or ""
    from sdstudio.networks import strip_network_tags

    return strip_network_tags(req.prompt or "")


def _apply_overrides(overrides: dict[str, Any], warnings: list[str]) -> tuple[str | None, int | None]:
    """Handle A1111 ``override_settings``: model, clip skip; refuse result-changing unknowns.

    (``sd_vae`` and ``token_merging_ratio`` are taken out by :func:`convert` before.)"""
    model = overrides.pop("sd_model_checkpoint", None) or None
    clip_skip = overrides.pop("CLIP_stop_at_last_layers", None)
    if overrides.pop("eta_noise_seed_delta", 0) not in (0, None):
        raise SDStudioError(
            "override_settings.eta_noise_seed_delta: only 0 is supported", field="eta_noise_seed_delta"
        )
    rng = overrides.pop("randn_source", "CPU")
    if str(rng).upper() != "CPU":
        raise SDStudioError(
            "override_settings.randn_source: sdstudio always draws noise on the CPU", field="randn_source"
        )
    ignored = sorted(k for k in overrides if k not in _HARMLESS_OPTIONS)
    if ignored:
        warnings.append(f"override_settings ignored: {', '.join(ignored)}")
    if clip_skip is None:
        return model, None
    value = _float_option(clip_skip, "CLIP_stop_at_last_layers")
    if value != int(value) or not 1 <= value <= 12:
        raise SDStudioError(
            "override_settings.CLIP_stop_at_last_layers must be an integer in [1, 12]",
            field="CLIP_stop_at_last_layers",
        )
    return model, int(value)


def _float_option(value: Any, name: str) -> float:
    """An override_settings number (finite), or a 422 naming it."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        message = f"override_settings.{name}: expected a finite number, got {value!r}"
        raise SDStudioError(message, field=name)
    return number


def _echo(req: _A1111Base) -> dict[str, Any]:
    """The request as A1111 echoes it in ``parameters`` (init images and mask dropped unless asked)."""
    params = req.model_dump(exclude=set((req.model_extra or {}).keys()))
    if isinstance(req, Img2ImgRequest) and not req.include_init_images:
        params["init_images"] = None
        params["mask"] = None
    params.pop("include_init_images", None)
    return params


def build_info(converted: ConvertedRequest, result: Any, *, version: str = "") -> str:
    """A1111 ``Processed.js()``: the ``info`` JSON string of a txt2img/img2img response.

    Per-image values come from each saved image's parameters (what its infotext was written from).
    """
    r = converted.request
    images = list(result.images) if result is not None else []
    model = result.model if result is not None else None
    seeds = [g.seed for g in images] or r.image_seeds()
    subseeds = [g.subseed for g in images] or r.image_subseeds()
    n = len(images)
    first = images[0].params if images else {}
    info = {
        "prompt": r.prompt,
        "all_prompts": [r.prompt] * n,
        "negative_prompt": r.negative_prompt,
        "all_negative_prompts": [r.negative_prompt] * n,
        "seed": seeds[0],
        "all_seeds": seeds,
        "subseed": subseeds[0],
        "all_subseeds": subseeds,
        "subseed_strength": r.subseed_strength,
        "width": r.width,
        "height": r.height,
        "sampler_name": r.sampler_name,
        "cfg_scale": r.cfg_scale,
        "steps": r.steps,
        "batch_size": r.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": result.model_title if result is not None else "",
        "sd_model_hash": (model.model_hash if model else "") or None,
        "sd_vae_name": (model.vae_name if model else "") or None,
        "sd_vae_hash": (model.vae_hash if model else "") or None,
        "seed_resize_from_w": r.seed_resize_from_w or -1,
        "seed_resize_from_h": r.seed_resize_from_h or -1,
        "denoising_strength": r.denoising_strength
        if converted.kind == "img2img"
        else (r.hires.denoising_strength if r.hires else None),
        "extra_generation_params": {
            k: v for k, v in first.items() if k not in _STANDARD_KEYS and v is not None
        },
        "index_of_first_image": 0,
        "infotexts": [g.infotext for g in images],
        "styles": list(r.styles),
        "job_timestamp": datetime.datetime.now().strftime("%Y%m%d%H%M%S"),
        "clip_skip": r.clip_skip,
        "is_using_inpainting_conditioning": bool(
            model and model.is_inpainting and converted.kind == "img2img"
        ),
        "version": version,
    }
    return json.dumps(info, ensure_ascii=False, default=str)


_STANDARD_KEYS = {
    "Steps",
    "Sampler",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Clip skip",
    "Version",
    "Face restoration",
}
