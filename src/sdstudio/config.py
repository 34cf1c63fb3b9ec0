"""Frozen request and settings dataclasses shared by every layer. No globals, no I/O.

Field names follow AUTOMATIC1111's API (``modules/api/models.py``) where one exists, so the
HTTP layer maps requests one to one and the infotext writer finds every value here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdstudio.errors import SDStudioError

MAX_SEED = 4294967294  # A1111: random.randrange(4294967294)
MAX_HR_SCALE = 16.0  # hires fix upscale factor (the target size is held to the width/height limits too)
MAX_TOKEN_MERGING_RATIO = 0.9  # A1111's slider range for token_merging_ratio: [0, 0.9]

BACKENDS = ("auto", "torch", "openvino")  # what runs the UNet and VAE decoder (--backend; models.loader)
DEFAULT_BACKEND = "auto"  # openvino where it is installed and the model converts, else torch


def default_backend(environ: Mapping[str, str] | None = None) -> str:
    """The backend when none is asked for: ``SDSTUDIO_BACKEND`` if set, else "auto".

    The test suite sets it to "torch" (tests/conftest.py): its hundreds of short model loads would
    each pay OpenVINO's compilation; the OpenVINO path has its own tests.
    """
    env = os.environ if environ is None else environ
    value = env.get("SDSTUDIO_BACKEND") or DEFAULT_BACKEND
    if value not in BACKENDS:
        raise SDStudioError(
            f"SDSTUDIO_BACKEND must be one of {', '.join(BACKENDS)}, not {value!r}", field="backend"
        )
    return value


@dataclass(frozen=True)
class Limits:
    """Upper bounds on what one request may ask for (configurable per server/CLI)."""

    max_width: int = 2048
    max_height: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 100
    max_prompt_chars: int = 10_000
    max_image_pixels: int = 4096 * 4096
    max_job_steps: int = 0  # work of one job in steps of a 512x512 image (runtime.admission); 0: derived
    max_native_factor: float = 0.0  # images at most this many times the model's native pixels; 0: off

    def job_steps_budget(self) -> int:
        """:attr:`max_job_steps`, or by default one batch (with CFG's two passes) at the largest size,
        steps and batch size these limits allow (2 x 8 x 150 steps x 2048x2048 = 38400 steps of a
        512x512 image)."""
        derived = 2 * self.max_batch_size * self.max_steps * self.max_width * self.max_height // (512 * 512)
        return self.max_job_steps or max(1, derived)


@dataclass(frozen=True)
class HiresSettings:
    """A1111 hires fix: first pass at (width, height), upscale, second pass (``enable_hr``)."""

    scale: float = 2.0
    upscaler: str = "Latent"
    upscaler_path: str = ""  # a model upscaler's file (models/ESRGAN/...), resolved at the edge
    second_pass_steps: int = 0  # 0 = same as the first pass
    denoising_strength: float = 0.7
    resize_x: int = 0
    resize_y: int = 0
    sampler: str = ""  # "" = same as the first pass
    scheduler: str = ""
    prompt: str = ""  # "" = same as the first pass
    negative_prompt: str = ""

    def target_size(self, width: int, height: int) -> tuple[int, int]:
        """Second-pass (width, height), as A1111 computes it from hr_scale or hr_resize_x/y."""
        if self.resize_x or self.resize_y:
            rx = self.resize_x or round(self.resize_y * width / height)
            ry = self.resize_y or round(self.resize_x * height / width)
            return _round8(rx), _round8(ry)
        return _round8(width * self.scale), _round8(height * self.scale)


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides what a text-to-image (or image-to-image) job produces.

    Seeds: ``seed`` -1 means random (resolved once per job by :meth:`with_resolved_seeds`);
    image ``i`` of the job (batch-major, ``i = iteration * batch_size + position``) uses
    ``seed + i`` and ``subseed + i``, as A1111 does.
    """

    prompt: str = ""
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    cfg_scale: float = 7.0
    steps: int = 20
    sampler_name: str = "Euler a"
    scheduler: str = "Automatic"
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    batch_size: int = 1
    n_iter: int = 1  # "Batch count"
    clip_skip: int = 1
    eta: float | None = None  # None = sampler default (A1111: eta_ancestral 1.0, eta_ddim 0.0)
    s_noise: float = 1.0
    initial_noise_multiplier: float = 1.0  # img2img: scale of the noise added to the init latents
    tiling: bool = False
    styles: tuple[str, ...] = ()
    hires: HiresSettings | None = None  # set = hires fix enabled
    # image-to-image family (None/defaults for txt2img)
    denoising_strength: float | None = None
    resize_mode: int = 0  # 0 just resize, 1 crop and resize, 2 resize and fill
    mask_blur: int = 4
    inpainting_fill: int = 1  # 0 fill, 1 original, 2 latent noise, 3 latent nothing
    inpaint_full_res: bool = False  # "only masked"
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. {"Init image hash": "..."}
    # inputs of the image-to-image family: PIL images (or paths/bytes), decoded at the edge
    init_images: tuple[Any, ...] = ()  # one for the whole batch, or batch_size of them
    mask: Any = None  # white = repaint; an RGBA mask's alpha is used
    outpaint: tuple[int, int, int, int] | None = None  # (left, right, up, down) pixels to add
    # speed (pipelines.speed; off by default = the plain path, bit-identical)
    s_min_uncond: float = 0.0  # A1111 "NGMS": skip the uncond pass on odd calls below this sigma
    fast: bool = False  # opt-in fast mode: DeepCache, tiny VAE, int8 UNet, token downsampling from 512 px (BENCHMARKS.md states the quality cost)
    token_merging_ratio: float = 0.0  # A1111 "Token merging ratio" (ToMe, pipelines.tome); 0 = off

    @property
    def n_images(self) -> int:
        return self.batch_size * self.n_iter

    @property
    def mode(self) -> str:
        """ "txt2img" | "img2img" | "inpaint" | "outpaint": which planner runs this request."""
        if self.outpaint is not None:
            return "outpaint"
        if not self.init_images:
            return "txt2img"
        return "inpaint" if self.mask is not None else "img2img"

    @property
    def kind(self) -> str:
        """Output folder family, as A1111: ``txt2img`` or ``img2img`` (inpaint and outpaint included)."""
        return "txt2img" if self.mode == "txt2img" else "img2img"

    def to_record(self) -> dict[str, Any]:
        """The request as plain JSON values (images left out), for the history database."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name in ("init_images", "mask"):
            out.pop(name)
        out["styles"] = list(self.styles)
        out["hires"] = dataclasses.asdict(self.hires) if self.hires is not None else None
        out["outpaint"] = list(self.outpaint) if self.outpaint is not None else None
        out["kind"] = self.kind
        return out

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)

    def with_resolved_seeds(self, rng: Any = None) -> GenerationRequest:
        """Return a copy with seed/subseed -1 replaced by random values (A1111 semantics)."""
        import random

        r = rng or random.SystemRandom()
        seed = self.seed if self.seed not in (-1, None) else r.randrange(MAX_SEED)
        subseed = self.subseed if self.subseed not in (-1, None) else r.randrange(MAX_SEED)
        return self.replace(seed=int(seed), subseed=int(subseed))

    def image_seeds(self) -> list[int]:
        """Seed of every image in job order: ``seed, seed+1, ...`` (needs resolved seeds)."""
        return [self.seed + i for i in range(self.n_images)]

    def image_subseeds(self) -> list[int]:
        return [self.subseed + i for i in range(self.n_images)]

    def validate(self, limits: Limits = Limits()) -> GenerationRequest:
        """Raise :class:`SDStudioError` naming the first bad field; return self when valid."""
        _check(isinstance(self.prompt, str), "prompt", "prompt must be a string")
        _check(
            len(self.prompt) + len(self.negative_prompt) <= limits.max_prompt_chars,
            "prompt",
            f"prompt is too long (limit {limits.max_prompt_chars} characters)",
        )
        for name, value, top in (
            ("width", self.width, limits.max_width),
            ("height", self.height, limits.max_height),
        ):
            _check(
                isinstance(value, int) and 16 <= value <= top and value % 8 == 0,
                name,
                f"{name} must be a multiple of 8 between 16 and {top}, got {value!r}",
            )
        _check(
            isinstance(self.steps, int) and 1 <= self.steps <= limits.max_steps,
            "steps",
            f"steps must be between 1 and {limits.max_steps}, got {self.steps!r}",
        )
        _check(
            1 <= self.batch_size <= limits.max_batch_size,
            "batch_size",
            f"batch_size must be between 1 and {limits.max_batch_size}, got {self.batch_size}",
        )
        _check(
            1 <= self.n_iter <= limits.max_batch_count,
            "n_iter",
            f"batch count (n_iter) must be between 1 and {limits.max_batch_count}, got {self.n_iter}",
        )
        _check(
            0 <= self.cfg_scale <= 100, "cfg_scale", f"cfg_scale must be in [0, 100], got {self.cfg_scale}"
        )
        _check(self.eta is None or 0 <= self.eta <= 10, "eta", f"eta must be in [0, 10], got {self.eta!r}")
        _check(0 <= self.s_noise <= 10, "s_noise", f"s_noise must be in [0, 10], got {self.s_noise!r}")
        _check(1 <= self.clip_skip <= 12, "clip_skip", f"clip_skip must be in [1, 12], got {self.clip_skip}")
        _check(
            -1 <= self.seed <= MAX_SEED and -1 <= self.subseed <= MAX_SEED,
            "seed",
            f"seed must be -1 (random) or in [0, {MAX_SEED}]",
        )
        for name, value, top in (
            ("seed_resize_from_w", self.seed_resize_from_w, limits.max_width),
            ("seed_resize_from_h", self.seed_resize_from_h, limits.max_height),
        ):  # the noise is drawn at this size: as bounded as the image size
            _check(
                isinstance(value, int) and 0 <= value <= top,
                name,
                f"{name} must be 0 (off) or at most {top}, got {value!r}",
            )
        _check(
            0.0 <= self.subseed_strength <= 1.0,
            "subseed_strength",
            f"subseed_strength must be in [0, 1], got {self.subseed_strength}",
        )
        if self.denoising_strength is not None:
            _check(
                0.0 <= self.denoising_strength <= 1.0,
                "denoising_strength",
                f"denoising_strength must be in [0, 1], got {self.denoising_strength}",
            )
        _check(
            0.0 <= self.initial_noise_multiplier <= 2.0,
            "initial_noise_multiplier",
            f"initial_noise_multiplier must be in [0, 2], got {self.initial_noise_multiplier}",
        )
        _check(self.resize_mode in (0, 1, 2), "resize_mode", "resize_mode must be 0, 1 or 2")
        _check(self.inpainting_fill in (0, 1, 2, 3), "inpainting_fill", "inpainting_fill must be 0..3")
        _check(0 <= self.mask_blur <= 64, "mask_blur", "mask_blur must be in [0, 64]")
        _check(
            0 <= self.s_min_uncond <= 100,
            "s_min_uncond",
            f"s_min_uncond must be in [0, 100], got {self.s_min_uncond}",
        )
        _check(
            0 <= self.token_merging_ratio <= MAX_TOKEN_MERGING_RATIO,
            "token_merging_ratio",
            f"token_merging_ratio must be in [0, {MAX_TOKEN_MERGING_RATIO}], got {self.token_merging_ratio}",
        )
        if self.outpaint is not None:
            _check(
                len(self.outpaint) == 4
                and all(isinstance(v, int) and v >= 0 for v in self.outpaint)
                and any(self.outpaint),
                "outpaint_left",
                "outpaint margins must be non-negative integers, at least one above 0",
            )
            _check(self.mask is None, "mask", "outpaint margins and a mask cannot be combined")
            _check(len(self.init_images) == 1, "init_images", "outpainting takes exactly one init image")
        if self.mask is not None:
            _check(bool(self.init_images), "init_images", "a mask needs an init image")
        if self.hires is not None:
            _check(
                isinstance(self.hires.scale, (int, float)) and 0 <= self.hires.scale <= MAX_HR_SCALE,
                "hr_scale",
                f"hr_scale must be a number in [0, {MAX_HR_SCALE:g}], got {self.hires.scale!r}",
            )
            _check(
                isinstance(self.hires.second_pass_steps, int)
                and 0 <= self.hires.second_pass_steps <= limits.max_steps,
                "hr_second_pass_steps",
                f"hr_second_pass_steps must be 0 (as the first pass) or at most {limits.max_steps}, "
                f"got {self.hires.second_pass_steps!r}",
            )
            for name, value, top in (
                ("hr_resize_x", self.hires.resize_x, limits.max_width),
                ("hr_resize_y", self.hires.resize_y, limits.max_height),
            ):
                _check(isinstance(value, int) and 0 <= value <= top, name, f"{name} must be in [0, {top}]")
            w, h = self.hires.target_size(self.width, self.height)
            _check(
                w <= limits.max_width and h <= limits.max_height,
                "hr_scale",
                f"hires target {w}x{h} exceeds the limit {limits.max_width}x{limits.max_height}",
            )
            _check(
                0.0 <= self.hires.denoising_strength <= 1.0,
                "hr_denoising_strength",
                "hires denoising strength must be in [0, 1]",
            )
        return self


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise SDStudioError(message, field=field_name)


def _round8(value: float) -> int:
    return max(16, int(value) // 8 * 8)
