"""What every mode plans before the shared sampling loop runs, and how it finishes each image.

The pieces txt2img, img2img/inpaint, outpaint and hires all use live here, below them, so no
pipeline imports another: the sampling plan (sampler, discrete schedule and sigmas, built once),
the prompt conditioning of a batch (``AND`` parts, prompt-editing schedules), the latent shape,
A1111's img2img step rule, 9-channel inputs, and :func:`finished_image`, which gives each image
its seeds, its A1111 parameters and the infotext written from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.families.model_sampling import DiscreteSchedule, ModelSampling
from sdstudio.infotext import format_infotext, generation_params
from sdstudio.networks import strip_network_tags
from sdstudio.prompts.encode import Conditioning
from sdstudio.prompts.schedule import prompt_schedule, split_and
from sdstudio.sampling.guidance import Composite
from sdstudio.sampling.registry import SamplerSpec, get_sampler, sigmas_for


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made an image, as A1111 reports it (``sd_model_name``, hashes, VAE)."""

    name: str
    model_hash: str = ""
    vae_name: str = ""
    vae_hash: str = ""
    is_inpainting: bool = False

    @classmethod
    def of(cls, model) -> ModelIdentity:
        return cls(model.name, model.model_hash, model.vae_name, model.vae_hash, model.is_inpainting)


@dataclass
class GeneratedImage:
    """One finished image with everything needed to save, report and reproduce it.

    ``params`` is the A1111 parameter mapping the infotext was written from (the API's ``info``
    reads it, never the infotext string back).
    """

    image: Any  # PIL.Image.Image (RGB)
    seed: int
    subseed: int
    infotext: str
    index: int  # position in the job (batch-major)
    request: GenerationRequest
    params: dict[str, Any]
    model: ModelIdentity


@dataclass(frozen=True)
class SamplingPlan:
    """Sampler, the model's sampling (schedule and parameterisation) and the sigmas one pass runs."""

    spec: SamplerSpec
    sampling: ModelSampling
    sigmas: torch.Tensor  # (steps + 1,) descending, ending in 0

    @property
    def schedule(self) -> DiscreteSchedule:
        return self.sampling.schedule

    @property
    def steps(self) -> int:
        return len(self.sigmas) - 1

    @classmethod
    def build(cls, model, sampler: str, scheduler: str, total: int, start: int = 0) -> SamplingPlan:
        """Sigmas of ``total`` steps under ``scheduler``, from index ``start`` (img2img tail)."""
        spec = get_sampler(sampler)
        sampling = model.sampling
        sampling.check_sampler(spec.name)
        sigmas = sampling.default_sigmas(total) if scheduler in ("", None, "Automatic") else None
        if sigmas is None:  # no schedule of the family's own (flow matching has one)
            sigmas = sigmas_for(spec, scheduler, total, sampling.schedule)
        return cls(spec, sampling, sigmas[start:])


def img2img_schedule(steps: int, strength: float, fix_steps: bool = False) -> tuple[int, int]:
    """Return ``(total, start)``: build sigmas for ``total`` steps and sample from index ``start``.

    A1111 ``setup_img2img_steps``: ``t_enc = int(min(strength, 0.999) * steps)`` and ``t_enc + 1``
    steps run; with ``fix_steps`` (always for the hires pass) the schedule is
    ``int(steps / min(strength, 0.999))`` long and exactly ``steps`` run.

    >>> img2img_schedule(20, 0.5)
    (20, 9)
    >>> img2img_schedule(20, 0.5, fix_steps=True)
    (40, 20)
    >>> img2img_schedule(20, 1.0)
    (20, 0)
    """
    capped = min(strength, 0.999)
    if fix_steps:
        total = int(steps / capped) if strength > 0 else 0
        t_enc = steps - 1
    else:
        total = steps
        t_enc = int(capped * steps)
    return total, total - t_enc - 1


# ----------------------------------------------------------------------------- conditioning

Schedule = list[tuple[int, Conditioning]]  # [(end_at_step, cond), ...], A1111 prompt editing


@dataclass
class PromptConditioning:
    """Prompt and negative prompt of a batch as schedules over sampler steps.

    ``parts`` holds one ``(schedule, weight)`` per ``AND`` sub-prompt (usually one, weight 1);
    step ``s`` (0-based) uses the first schedule entry with ``s <= end_at_step`` (A1111).
    """

    parts: list[tuple[Schedule, float]]
    unconds: Schedule

    @property
    def cond(self) -> Conditioning:
        return self.parts[0][0][0][1]

    @property
    def uncond(self) -> Conditioning:
        return self.unconds[0][1]

    def cond_at(self, step: int) -> Conditioning | Composite:
        if len(self.parts) == 1 and self.parts[0][1] == 1.0:
            return _scheduled(self.parts[0][0], step)
        return Composite(tuple((_scheduled(schedule, step), w) for schedule, w in self.parts))

    def uncond_at(self, step: int) -> Conditioning:
        return _scheduled(self.unconds, step)

    def with_concat(self, concat: torch.Tensor | None) -> tuple[Callable, Callable]:
        """``(cond_at, uncond_at)``, carrying a 9-channel model's extra input when ``concat`` is given."""
        if concat is None:
            return self.cond_at, self.uncond_at
        return concat_lookup(self.cond_at, concat), concat_lookup(self.uncond_at, concat)


def _scheduled(schedule: Schedule, step: int) -> Conditioning:
    for end, cond in schedule:
        if step <= end:
            return cond
    return schedule[-1][1]


def encode_for_batch(
    model,
    request: GenerationRequest,
    batch_size: int,
    width: int,
    height: int,
    prompt: str | None = None,
    negative: str | None = None,
    steps: int | None = None,
) -> PromptConditioning:
    """Encode ``AND`` parts and their schedules (``[from:to:when]``, ``[a|b]``), repeated for the batch.

    Every distinct text is encoded once, all with the same number of 75-token chunks. The text
    encoders are idle after: where the backend frees them between uses, they go now, before sampling, and are read back at the next encode.
    """
    steps = steps or request.steps
    parts = [
        (prompt_schedule(text, steps), w)
        for text, w in split_and(strip_network_tags(request.prompt if prompt is None else prompt))
    ]  # <lora:...> tags are applied as weights (sdstudio.networks), not encoded (A1111 extra networks)
    negative_sched = prompt_schedule(request.negative_prompt if negative is None else negative, steps)
    texts = {text for schedule, _ in parts for _, text in schedule} | {text for _, text in negative_sched}
    family = model.family
    chunks = max(family.count_chunks(model, text) for text in texts)
    encoded = {}
    for text in texts:
        cond = family.encode_text(model, text, request.clip_skip, chunks, width, height)
        encoded[text] = cond.repeat(batch_size)
    model.release_text_encoders()
    return PromptConditioning(
        [([(end, encoded[text]) for end, text in schedule], w) for schedule, w in parts],
        [(end, encoded[text]) for end, text in negative_sched],
    )


# ----------------------------------------------------------------------------- shapes and seeds


def latent_shape(model, width: int, height: int) -> tuple[int, int, int]:
    """(C, h, w) of the latents for a ``width`` x ``height`` image."""
    f = model.vae_scale_factor
    if width % f or height % f:
        raise SDStudioError(f"width and height must be multiples of {f} for this model, got {width}x{height}")
    return (model.latent_channels, height // f, width // f)


def seed_resize_from(model, request: GenerationRequest) -> tuple[int, int]:
    """A1111 "seed resize from" (h, w) in latent cells; (0, 0) = off."""
    f = model.vae_scale_factor
    if request.seed_resize_from_w > 0 and request.seed_resize_from_h > 0:
        return (request.seed_resize_from_h // f, request.seed_resize_from_w // f)
    return (0, 0)


# ----------------------------------------------------------------------------- 9-channel input


def image_conditioning(
    encode: Callable[[torch.Tensor], torch.Tensor],
    source: torch.Tensor,
    mask: torch.Tensor | None,
    latent_hw: tuple[int, int],
    mask_weight: float = 1.0,
) -> torch.Tensor:
    """Return the 9-channel model's extra input, (B, 1 + C, h, w) = [mask, masked_image_latent].

    ``source`` (B, 3, H, W) in [-1, 1]; ``mask`` (1, 1, H, W) rounded 0/1 (None = all ones, as
    for txt2img). The masked image is ``lerp(source, source * (1 - mask), mask_weight)`` encoded
    by the VAE (A1111 ``inpainting_image_conditioning``, "Conditional mask weight" 1.0).
    """
    if mask is None:
        mask = source.new_ones(1, 1, *source.shape[-2:])
    mask = mask.to(source)
    masked = torch.lerp(source, source * (1.0 - mask), mask_weight)
    masked_latents = encode(masked)  # (B, C, h, w)
    small = torch.nn.functional.interpolate(mask, size=latent_hw)  # nearest, (1, 1, h, w)
    small = small.expand(masked_latents.shape[0], -1, -1, -1).to(masked_latents)
    return torch.cat([small, masked_latents], dim=1)


def txt2img_concat(model: Any, batch: int, height: int, width: int) -> torch.Tensor | None:
    """9-channel input for text-to-image on an inpainting model, (B, 5, h, w); None for other models.

    A1111 ``txt2img_image_conditioning``: a mask of ones and the latent of a uniform 0.5 grey
    image (0 in the VAE's [-1, 1] range), so the model sees nothing known.
    """
    if not model.is_inpainting:
        return None
    from sdstudio.pipelines.components import encode_images

    grey = torch.full((1, 3, height, width), 0.5)
    f = model.vae_scale_factor
    cond = image_conditioning(
        lambda x: encode_images(model, (x + 1) / 2), grey * 2 - 1, None, (height // f, width // f)
    )
    return cond.expand(batch, -1, -1, -1).contiguous()


def concat_lookup(
    lookup: Callable[[int], Conditioning], concat: torch.Tensor
) -> Callable[[int], Conditioning]:
    """Wrap a per-step conditioning lookup so each result carries ``extra["concat"]`` (9-channel input)."""

    def with_concat(cond: Conditioning) -> Conditioning:
        return Conditioning(cond.context, cond.pooled, {**cond.extra, "concat": concat})

    def at(step: int):
        cond = lookup(step)
        if isinstance(cond, Composite):
            return Composite(tuple((with_concat(c), w) for c, w in cond.parts))
        return with_concat(cond)

    return at


# ----------------------------------------------------------------------------- finishing


def schedule_label(spec: SamplerSpec, request: GenerationRequest) -> str | None:
    """A1111 writes "Schedule type" when the user picked one; "Automatic" stays implicit."""
    return None if request.scheduler in ("", "Automatic", None) else spec.resolve_schedule(request.scheduler)


def finished_image(
    model, request: GenerationRequest, spec: SamplerSpec, image, index: int, extra: dict
) -> GeneratedImage:
    """Wrap image ``index`` of the job with its seeds, A1111 parameters and the infotext written from them."""
    seed, subseed = request.seed + index, request.subseed + index
    params = generation_params(
        request,
        seed=seed,
        subseed=subseed,
        model=model,
        extra=extra,
        schedule_type=schedule_label(spec, request),
    )
    text = format_infotext(request.prompt, request.negative_prompt, params)
    return GeneratedImage(image, seed, subseed, text, index, request, params, ModelIdentity.of(model))


def emit(results: list, item: GeneratedImage, on_image: Callable[[GeneratedImage], None] | None) -> None:
    results.append(item)
    if on_image is not None:
        on_image(item)
