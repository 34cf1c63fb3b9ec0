"""How a model family samples: its training noise schedule and its prediction parameterisation.

ComfyUI's ``model_sampling`` (EPS / V_PREDICTION x discrete schedule) and k-diffusion's
``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser``: a :class:`ModelSampling` turns the network's
raw output into the x0 estimate a sampler's denoiser ``D(x, sigma)`` returns, scales the network
input, maps sigma to the network's timestep, and says how noise is added to a clean latent
(``noise_scaling``; img2img starts there). Every method is rank-agnostic (``append_dims``), so a
(B, C, T, H, W) video latent goes through the same maths as a (B, C, H, W) image latent.

This module is the one source of DDPM betas (``betas_for``); training and sampling both read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from sdstudio.errors import SDStudioError

PREDICTION_TYPES = ("epsilon", "v_prediction")


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """Append trailing singleton dims to ``x`` until it has ``target_dims`` (k-diffusion ``append_dims``).

    >>> append_dims(torch.ones(2), 5).shape
    torch.Size([2, 1, 1, 1, 1])
    """
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}, which is less")
    return x[(...,) + (None,) * missing]


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


class ModelSampling:
    """What every parameterisation shares: its discrete table of sigmas (``schedule``) and what the
    sampling plan may ask (ComfyUI ``model_sampling``)."""

    schedule: DiscreteSchedule

    @property
    def sigma_min(self) -> float:
        return self.schedule.sigma_min

    @property
    def sigma_max(self) -> float:
        return self.schedule.sigma_max

    def check_sampler(self, name: str) -> None:
        """Raise SDStudioError for a sampler this parameterisation cannot run (default: every one fits)."""

    def default_sigmas(self, steps: int) -> torch.Tensor | None:
        """The family's own "Automatic" schedule, (steps + 1,); None: the sampler's A1111 default."""
        return None


class DiscreteModelSampling(ModelSampling):
    """eps-prediction on a discrete DDPM schedule (Ho et al. 2020; k-diffusion ``CompVisDenoiser``).

    In k-diffusion's VE view ``x = x0 + sigma * eps``: the network sees ``x * c_in`` with
    ``c_in = 1 / sqrt(sigma^2 + 1)`` at timestep ``t(sigma)`` and ``x0 = x - sigma * eps``.
    """

    prediction_type = "epsilon"

    def __init__(self, schedule: DiscreteSchedule) -> None:
        self.schedule = schedule

    @classmethod
    def from_config(cls, scheduler_config: dict) -> DiscreteModelSampling:
        """The model sampling of a diffusers scheduler config (betas and ``prediction_type``)."""
        kind = scheduler_config.get("prediction_type", "epsilon")
        if kind not in PREDICTION_CLASSES:
            raise SDStudioError(
                f"unsupported prediction type {kind!r}; supported: {', '.join(PREDICTION_TYPES)}",
                field="prediction_type",
            )
        return PREDICTION_CLASSES[kind](DiscreteSchedule.from_config(scheduler_config))

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's (continuous) timestep for each sigma, on the CPU: (B,)."""
        return self.schedule.sigma_to_t(sigma.float().cpu())

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The network input ``x * c_in``; ``sigma`` (B,), ``x`` (B, C, ...)."""
        s = append_dims(sigma.float(), x.ndim)  # (B, 1, ...)
        return x * (1 / (s**2 + 1) ** 0.5)

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x0 from the network's eps ``output``: ``x - sigma * eps``."""
        s = append_dims(sigma.float(), x.ndim)
        return x - output * s

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The sampler's start ``latent + sigma * noise`` (``latent`` None: pure noise, txt2img)."""
        scaled = noise * sigma
        return scaled if latent is None else latent.to(scaled.device, torch.float32) + scaled


class VDiscreteModelSampling(DiscreteModelSampling):
    """v-prediction (Salimans & Ho 2022; SD 2.x 768 px; k-diffusion ``CompVisVDenoiser``):
    ``x0 = c_skip * x + c_out * v`` with ``c_skip = 1/(sigma^2+1)``, ``c_out = -sigma/sqrt(sigma^2+1)``."""

    prediction_type = "v_prediction"

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        s = append_dims(sigma.float(), x.ndim)
        return x * (1 / (s**2 + 1)) + output * (-s / (s**2 + 1) ** 0.5)


PREDICTION_CLASSES: dict[str, type[DiscreteModelSampling]] = {
    "epsilon": DiscreteModelSampling,
    "v_prediction": VDiscreteModelSampling,
}


def flow_shift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's timestep shift (Esser et al. 2024, eq. 23): ``shift * s / (1 + (shift - 1) * s)``."""
    return shift * sigma / (1 + (shift - 1) * sigma)


class FlowModelSampling(ModelSampling):
    """Rectified flow (SD3, Flux; ComfyUI ``CONST`` x ``ModelSamplingDiscreteFlow``).

    ``x_sigma = (1 - sigma) * x0 + sigma * eps`` with sigma in (0, 1]; the network predicts the
    velocity ``v = eps - x0`` at timestep ``sigma * 1000``, so ``x0 = x - sigma * v``. The probability
    flow ODE is the same ``dx/dsigma = (x - D(x, sigma)) / sigma`` as in k-diffusion's VE view, so its
    ODE samplers run unchanged; samplers whose noise injection assumes ``x = x0 + sigma * eps``
    (ancestral, SDE) or a VP schedule (UniPC, LCM) are refused (:meth:`check_sampler`).
    """

    prediction_type = "flow"
    ODE_SAMPLERS = ("Euler", "Heun", "LMS", "DPM2", "DPM++ 2M", "DDIM", "PLMS")

    def __init__(self, scheduler_config: dict) -> None:
        self.config = dict(scheduler_config)
        self.shift = float(self.config.get("shift", 1.0))
        self.multiplier = int(self.config.get("num_train_timesteps", 1000))
        t = torch.arange(1, self.multiplier + 1, dtype=torch.float64) / self.multiplier
        sigmas = flow_shift(t, self.shift)  # (T,) ascending, the discrete table "Uniform" etc. read
        self.schedule = DiscreteSchedule(sigmas.float(), sigmas.log().float())

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.float().cpu() * self.multiplier

    def calculate_input(self, sigma: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x

    def calculate_denoised(self, sigma: torch.Tensor, output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x - output * append_dims(sigma.float(), x.ndim)

    def noise_scaling(
        self, sigma: torch.Tensor, noise: torch.Tensor, latent: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``sigma * noise + (1 - sigma) * latent`` (pure ``sigma * noise`` for txt2img)."""
        scaled = noise * sigma
        if latent is None:
            return scaled
        return scaled + latent.to(scaled.device, torch.float32) * (1 - sigma)

    def default_sigmas(self, steps: int) -> torch.Tensor:
        """The "Automatic" schedule: diffusers' ``FlowMatchEulerDiscreteScheduler`` sigmas for the
        model's scheduler config (what the reference pipelines sample), ending in 0: (steps + 1,)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.config)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.float().cpu()

    def check_sampler(self, name: str) -> None:
        if name not in self.ODE_SAMPLERS:
            raise SDStudioError(
                f"sampler {name!r} does not fit a flow-matching model; use one of {', '.join(self.ODE_SAMPLERS)}",
                field="sampler_name",
            )
