"""The one sampling loop shared by txt2img, img2img, inpainting, outpainting and hires fix.

``sample_batch`` draws per-image noise, wraps the model as a CFG denoiser and runs the chosen
sampler over the given sigmas. img2img-style modes pass ``init_latent`` and a tail of the
schedule; inpainting passes ``post_denoise`` (mask blending) or 9-channel ``cond.extra["concat"]``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.components import ModelDenoiser, preview_image
from sdstudio.pipelines.plan import SamplingPlan, encode_for_batch, latent_shape, txt2img_concat
from sdstudio.pipelines.speed import FAST_DEEPCACHE_INTERVAL, SpeedOptions
from sdstudio.prompts.encode import Conditioning
from sdstudio.sampling.control import CancelToken, ProgressCallback, StepInfo
from sdstudio.sampling.guidance import CFGDenoiser
from sdstudio.sampling.noise import ImageNoise
from sdstudio.sampling.schedules import DiscreteSchedule

log = logging.getLogger(__name__)


def job_batches(request, cancel: CancelToken | None) -> Iterator[tuple[int, slice]]:
    """Yield (batch index, slice of the job's images) batch by batch (A1111 batch-major order).

    Stops before the next batch once the job is interrupted; a skip only ends the current batch,
    so it is cleared before each new one.
    """
    for it in range(request.n_iter):
        if cancel is not None and cancel.interrupted:
            return
        if cancel is not None:
            cancel.clear_skip()
        yield it, slice(it * request.batch_size, (it + 1) * request.batch_size)


def noise_kwargs(request, images: slice, seed_resize: tuple[int, int]) -> dict:
    """The per-batch noise arguments of :func:`sample_batch` (seeds, variation seeds, seed resize)."""
    return {
        "seeds": request.image_seeds()[images],
        "subseeds": request.image_subseeds()[images],
        "subseed_strength": request.subseed_strength,
        "seed_resize_from": seed_resize,
        "eta": request.eta,
        "s_noise": request.s_noise,
    }


class SamplingInterrupted(Exception):
    """Raised from the step callback when a job is interrupted or skipped; carries the last x0 guess."""

    def __init__(self, denoised: torch.Tensor, step: int) -> None:
        super().__init__("sampling interrupted")
        self.denoised = denoised
        self.step = step  # steps that ran


@dataclass
class JobProgress:
    """Counts steps across a whole job (all batches, hires passes) for progress reporting."""

    total_steps: int
    batch_count: int
    callback: ProgressCallback | None = None
    cancel: CancelToken | None = None
    done_steps: int = 0
    started: float = field(default_factory=time.monotonic)
    stopped: tuple[int, int] | None = None  # (steps run, steps planned) of the last pass, if cut short

    def interrupted_params(self) -> dict[str, str]:
        """Infotext entry of images whose last pass was interrupted or skipped: the real step count.

        ``Steps`` keeps the planned count (the schedule the image was sampled on), so the
        infotext never claims more steps ran than did.
        """
        if self.stopped is None:
            return {}
        return {"Interrupted": f"after step {self.stopped[0]} of {self.stopped[1]}"}


@dataclass
class SamplerContext:
    """What samplers that need the discrete schedule (UniPC) may read."""

    schedule: DiscreteSchedule
    scheduler_config: dict


def sample_batch(
    model,
    plan: SamplingPlan,
    cond_at: Callable[[int], Conditioning],
    uncond_at: Callable[[int], Conditioning],
    *,
    cfg_scale: float,
    seeds: Sequence[int],
    latent_shape: tuple[int, int, int],  # (C, h, w)
    subseeds: Sequence[int] = (),
    subseed_strength: float = 0.0,
    seed_resize_from: tuple[int, int] = (0, 0),
    init_latent: torch.Tensor | None = None,  # (B, C, h, w) scaled latents for img2img
    noise_multiplier: float = 1.0,
    post_denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    eta: float | None = None,
    s_noise: float = 1.0,
    batch_index: int = 0,
    progress: JobProgress | None = None,
    on_step: Callable[[dict], None] | None = None,
    speed: SpeedOptions | None = None,
) -> torch.Tensor:
    """Run one batch through the sampler; returns final latents (B, C, h, w), float32.

    If the job is interrupted or skipped mid-way, returns the sampler's last x0 prediction (as A1111
    does, so the partial image is still shown) and leaves the decision to stop to the caller.
    """
    sigmas = plan.sigmas
    noise = ImageNoise(latent_shape, seeds, subseeds, subseed_strength, seed_resize_from, device=model.device)
    x = model.sampling.noise_scaling(sigmas[0], noise.initial() * noise_multiplier, init_latent)  # (B, C, h, w)
    speed = speed or SpeedOptions()  # default: the plain path
    compiled = model.compiled_unet
    todo = speed.todo_at(latent_shape[-2:])  # token downsampling at this size (1: none)
    if speed.needs_torch_unet(model.unet, compiled):
        model.ensure_torch_unet()  # the backend may have freed the PyTorch UNet's weights
    elif speed.int8:
        compiled = int8_unet(model, todo)
    unet = speed.unet_for(model.unet, compiled, todo)
    latest = {"denoised": x, "step": 0}  # what an interrupt returns: the last x0 guess
    cancel = progress.cancel if progress is not None else None

    def stop_now(*_args) -> None:
        """Raised inside the model call (between its blocks) once the job is cancelled or skipped."""
        if cancel is not None and cancel.stop_batch:
            raise SamplingInterrupted(latest["denoised"], latest["step"])

    denoiser = CFGDenoiser(
        _Checked(ModelDenoiser(model, plan.sampling, unet), stop_now), cond_at, uncond_at, cfg_scale, sigmas,
        Conditioning.cat, post_denoise, speed.s_min_uncond, speed.uncond_every_step,
    )  # fmt: skip
    steps = plan.steps

    def callback(state: dict) -> None:
        latest["denoised"], latest["step"] = state["denoised"], state["i"] + 1
        if on_step is not None:
            on_step(state)
        if progress is None:
            return
        progress.done_steps += 1
        if progress.callback is not None:
            progress.callback(_step_info(model, state, steps, batch_index, progress))
        if progress.cancel is not None and progress.cancel.stop_batch and state["i"] + 1 < steps:
            raise SamplingInterrupted(state["denoised"], state["i"] + 1)

    if progress is not None:
        progress.stopped = None
    hooks = _block_hooks(model.unet, stop_now) if cancel is not None else []
    try:
        return plan.spec.function(
            denoiser,
            x,
            sigmas,
            noise=noise,
            callback=callback,
            eta=eta,
            s_noise=s_noise,
            ctx=SamplerContext(plan.schedule, model.scheduler_config),
        ).float()
    except SamplingInterrupted as stop:
        if progress is not None:
            progress.stopped = (stop.step, steps)
        return stop.denoised.float()
    finally:
        for hook in hooks:
            hook.remove()


class _Checked:
    """A denoiser that checks for a cancel before each model call (also where a compiled graph runs)."""

    def __init__(self, inner, check: Callable[[], None]) -> None:
        self.inner, self.check = inner, check

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.check()
        return self.inner(x, sigma, cond)


def _block_hooks(network: torch.nn.Module, check: Callable[..., None]) -> list:
    """Forward pre-hooks (torch's hook API) that run ``check`` before each block of the PyTorch
    network: its direct children and the elements of its block lists (UNet down/mid/up blocks, DiT
    transformer blocks), so a cancel takes effect within one block's time, not one step's."""
    blocks = []
    for child in network.children():
        blocks.extend(child if isinstance(child, torch.nn.ModuleList) else [child])
    return [block.register_forward_pre_hook(check) for block in blocks]


def _step_info(model, state: dict, steps: int, batch_index: int, progress: JobProgress) -> StepInfo:
    denoised = state["denoised"]
    return StepInfo(
        step=state["i"] + 1,
        steps=steps,
        batch_index=batch_index,
        batch_count=progress.batch_count,
        job_step=progress.done_steps,
        job_steps=progress.total_steps,
        preview=lambda: preview_image(model, denoised),
    )


CALIBRATION_PROMPTS = (
    "a photograph of a cat sitting on a sofa",
    "a watercolor landscape with mountains at sunset",
    "portrait of an old man, detailed face, studio light",
)  # generic, not the embedded model's captions (its quality is measured on those)
CALIBRATION_STEPS = 10


def int8_unet(model, todo: int = 1):
    """The compiled UNet's int8 twin (fast mode; with ``todo`` > 1 the one with token downsampling),
    calibrated on first use by :func:`calibrate_int8`; the compiled UNet itself (with a warning) where
    int8 cannot be built (nncf missing, too little memory): its float graphs have no token downsampling."""
    try:
        return model.compiled_unet.int8(lambda: calibrate_int8(model), todo)
    except SDStudioError as exc:
        log.warning("fast mode without the int8 UNet: %s", exc)
        return model.compiled_unet


def calibrate_int8(model) -> None:
    """The calibration jobs of int8 quantisation: fast-mode (DeepCache) trajectories of a few
    generic prompts, DPM++ 2M, CFG 7, at half the model's native size (the UNet's calls record)."""
    size = max(64, model.native_size // 2 // 64 * 64)
    base = GenerationRequest(width=size, height=size, steps=CALIBRATION_STEPS, sampler_name="DPM++ 2M")
    plan = SamplingPlan.build(model, base.sampler_name, base.scheduler, CALIBRATION_STEPS)
    speed = SpeedOptions(deepcache_interval=FAST_DEEPCACHE_INTERVAL)
    for seed, prompt in enumerate(CALIBRATION_PROMPTS):
        request = base.replace(prompt=prompt, seed=seed)
        conditioning = encode_for_batch(model, request, 1, size, size)
        cond_at, uncond_at = conditioning.with_concat(txt2img_concat(model, 1, size, size))
        sample_batch(model, plan, cond_at, uncond_at, cfg_scale=7.0, seeds=[seed],
                     latent_shape=latent_shape(model, size, size), speed=speed)  # fmt: skip
