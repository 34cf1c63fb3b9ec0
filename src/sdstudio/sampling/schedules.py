"""Noise schedules as plain functions returning sigmas (k-diffusion style, Karras et al. 2022).

Every schedule returns a 1-D float32 tensor of ``n + 1`` sigmas, descending, ending in 0.
``DiscreteSchedule`` is the model's own training schedule (DDPM betas -> alphas_cumprod ->
``sigma = sqrt((1 - a) / a)``) with the log-sigma interpolation k-diffusion uses to go between
continuous sigma and the discrete UNet timestep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdstudio.errors import SDStudioError


def betas_for(config: dict) -> torch.Tensor:
    """DDPM betas from a diffusers scheduler config (linear, scaled_linear, squaredcos_cap_v2)."""
    n = int(config.get("num_train_timesteps", 1000))
    start, end = float(config.get("beta_start", 0.00085)), float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "linear":
        return torch.linspace(start, end, n, dtype=torch.float64)
    if kind == "scaled_linear":
        return torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, cosine schedule
        f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        return torch.tensor([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=torch.float64)
    raise SDStudioError(f"unknown beta_schedule {kind!r}; use linear, scaled_linear or squaredcos_cap_v2")


@dataclass(frozen=True)
class DiscreteSchedule:
    """The model's discrete sigmas, one per training timestep (k-diffusion ``DiscreteSchedule``)."""

    sigmas: torch.Tensor  # (T,) ascending in t
    log_sigmas: torch.Tensor  # (T,)

    @classmethod
    def from_config(cls, config: dict) -> DiscreteSchedule:
        alphas_cumprod = torch.cumprod(1.0 - betas_for(config), dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        return cls(sigmas.float(), sigmas.log().float())

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Continuous timestep for each sigma, by interpolating log-sigma between neighbours."""
        log_sigma = sigma.float().clamp(min=1e-10).log()
        dists = log_sigma - self.log_sigmas[:, None].to(log_sigma.device)
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        ls = self.log_sigmas.to(log_sigma.device)
        w = ((ls[low] - log_sigma) / (ls[low] - ls[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high = t.floor().long(), t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()


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
