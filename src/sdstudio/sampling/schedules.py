"""Noise schedules as plain functions returning sigmas (k-diffusion style, Karras et al. 2022).

Every schedule returns a 1-D float32 tensor of ``n + 1`` sigmas, descending, ending in 0.
The model's own training schedule (``DiscreteSchedule``: DDPM betas -> sigmas, and the
sigma <-> timestep interpolation) is a fact of the model family and lives in
``sdstudio.families.model_sampling``; the functions here only space sigmas between its ends.
"""

from __future__ import annotations

import math

import torch

from sdstudio.errors import SDStudioError
from sdstudio.families.model_sampling import DiscreteSchedule


def append_zero(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """The model's own sigmas at ``n`` timesteps spaced evenly from T-1 to 0 (A1111 "Automatic")."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, n)
    return append_zero(schedule.t_to_sigma(t))


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022), eq. 5: sigmas evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Sigmas evenly spaced in log sigma."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def get_sigmas_polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> torch.Tensor:
    """Polynomial in log sigma (k-diffusion ``get_sigmas_polyexponential``)."""
    ramp = torch.linspace(1, 0, n) ** rho
    return append_zero(torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)))


def get_sigmas_sgm_uniform(n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """SGM Uniform (A1111/ComfyUI): n evenly spaced timesteps from T-1, excluding the end point."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, n + 1)[:-1]
    return append_zero(schedule.t_to_sigma(t))


SCHEDULE_TYPES = ("Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform")


def build_sigmas(schedule_type: str, n: int, schedule: DiscreteSchedule) -> torch.Tensor:
    """Sigmas for ``n`` steps of the given A1111 schedule type ("Automatic" must be resolved first)."""
    lo, hi = schedule.sigma_min, schedule.sigma_max
    if schedule_type == "Uniform":
        return get_sigmas_uniform(n, schedule)
    if schedule_type == "Karras":
        return get_sigmas_karras(n, lo, hi)
    if schedule_type == "Exponential":
        return get_sigmas_exponential(n, lo, hi)
    if schedule_type == "Polyexponential":
        return get_sigmas_polyexponential(n, lo, hi)
    if schedule_type == "SGM Uniform":
        return get_sigmas_sgm_uniform(n, schedule)
    raise SDStudioError(f"unknown schedule type {schedule_type!r}; choose one of {', '.join(SCHEDULE_TYPES)}")
