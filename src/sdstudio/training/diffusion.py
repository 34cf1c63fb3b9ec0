"""DDPM training pieces shared by the pixel and latent trainers (Ho et al. 2020; v-prediction: Salimans & Ho 2022).

The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) and the noise schedules come
from the one betas source (``families.model_sampling.betas_for``; diffusers' scheduler config keys), so
a trained model's ``scheduler/`` config means the same thing to every sampler; sampling for preview
grids uses DDIM (Song et al. 2021).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdstudio.errors import SDStudioError
from sdstudio.families.model_sampling import betas_for

# our names -> diffusers beta_schedule names
SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}
PREDICTIONS = {"eps": "epsilon", "epsilon": "epsilon", "v": "v_prediction", "v_prediction": "v_prediction"}


def scheduler_config(schedule: str = "linear", prediction: str = "eps", timesteps: int = 1000) -> dict:
    """Return a diffusers scheduler config for a named beta schedule and prediction type.

    ``linear``: betas 1e-4..0.02 (DDPM); ``scaled_linear``: sqrt-space 0.00085..0.012 (Stable
    Diffusion); ``cosine``: Nichol & Dhariwal 2021 (diffusers ``squaredcos_cap_v2``).
    """
    if schedule not in SCHEDULES:
        raise SDStudioError(
            f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}", field="schedule"
        )
    if prediction not in PREDICTIONS:
        raise SDStudioError(f"unknown prediction {prediction!r}; choose eps or v", field="prediction")
    linear = schedule == "linear"
    return {
        "num_train_timesteps": timesteps,
        "beta_start": 0.0001 if linear else 0.00085,
        "beta_end": 0.02 if linear else 0.012,
        "beta_schedule": SCHEDULES[schedule],
        "prediction_type": PREDICTIONS[prediction],
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "timestep_spacing": "leading",
    }


def alphas_cumprod(config: dict) -> torch.Tensor:
    """Return abar_t for t = 0..T-1 ``(T,)`` float32 under ``config``, from the one betas source the
    samplers use too (:func:`sdstudio.families.model_sampling.betas_for`, accumulated in float64)."""
    return torch.cumprod(1.0 - betas_for(config), dim=0).float()


def q_sample(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """Return x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise (DDPM eq. 4); ``t`` is ``(B,)`` long."""
    a = abar.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, prediction: str):
    """Return the regression target: the noise (eps) or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
    if prediction == "epsilon":
        return noise
    a = abar.to(x0.device)[t].view(-1, *([1] * (x0.dim() - 1)))
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def predicted_x0(x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor, abar: torch.Tensor, prediction: str):
    """Return the model's estimate of x_0 from its eps or v output at step ``t``."""
    a = abar.to(x_t.device)[t].view(-1, *([1] * (x_t.dim() - 1)))
    if prediction == "epsilon":
        return (x_t - (1 - a).sqrt() * out) / a.sqrt()
    return a.sqrt() * x_t - (1 - a).sqrt() * out


def draw_noise_and_t(shape: tuple, timesteps: int, gen: torch.Generator, device) -> tuple:
    """Return Gaussian noise of ``shape`` and uniform timesteps ``(B,)``, drawn on the CPU with ``gen``."""
    noise = torch.randn(shape, generator=gen).to(device)
    t = torch.randint(0, timesteps, (shape[0],), generator=gen).to(device)
    return noise, t


@torch.no_grad()
def ddim_sample(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    shape: tuple,
    config: dict,
    steps: int = 25,
    seed: int = 0,
    device="cpu",
) -> torch.Tensor:
    """Return samples ``shape`` from a model ``denoise(x_t, t) -> eps|v`` with DDIM (eta 0), CPU-seeded noise."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
    for t in sched.timesteps:
        out = denoise(x, t.to(device).expand(shape[0]))
        x = sched.step(out.float(), t, x).prev_sample
    return x
