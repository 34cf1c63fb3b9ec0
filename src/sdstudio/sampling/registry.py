"""Sampler registry by AUTOMATIC1111 names (REFERENCE.md §6) and schedule resolution.

A ``SamplerSpec`` ties an A1111 name and its aliases to a k-diffusion-style function and to the
schedule types that apply. ``sigmas_for`` turns (sampler, schedule type, steps) into sigmas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from sdstudio.errors import SDStudioError
from sdstudio.sampling import k_samplers as k
from sdstudio.sampling.schedules import SCHEDULE_TYPES, DiscreteSchedule, build_sigmas

ALL_SCHEDULES = tuple(s for s in SCHEDULE_TYPES if s != "Automatic")


@dataclass(frozen=True)
class SamplerSpec:
    """An A1111 sampler: its function, aliases, default schedule and allowed schedule types."""

    name: str
    function: Callable[..., torch.Tensor]
    aliases: tuple[str, ...] = ()
    default_schedule: str = "Uniform"
    schedules: tuple[str, ...] = ALL_SCHEDULES
    stochastic: bool = False  # draws noise after the first step (ancestral / SDE)
    discard_penultimate_sigma: bool = False  # A1111 DPM2: cat(sigmas[:-2], sigmas[-1:])
    uses_eta: bool = False
    options: dict[str, Any] = field(default_factory=dict)

    def resolve_schedule(self, schedule_type: str | None) -> str:
        """The concrete schedule type for this sampler ("Automatic" -> the sampler's default)."""
        wanted = _canonical_schedule(schedule_type)
        if wanted == "Automatic":
            return self.default_schedule
        if wanted not in self.schedules:
            raise SDStudioError(
                f"schedule type {wanted!r} does not apply to sampler {self.name!r}; "
                f"allowed: Automatic, {', '.join(self.schedules)}",
                field="scheduler",
            )
        return wanted


def _spec(name, fn, aliases=(), **kw) -> SamplerSpec:
    return SamplerSpec(name=name, function=fn, aliases=tuple(aliases), **kw)


# Order and names as A1111 v1.10 lists them (modules/sd_samplers_kdiffusion.py, sd_samplers_timesteps.py).
SAMPLERS: tuple[SamplerSpec, ...] = (
    _spec("DPM++ 2M", k.sample_dpmpp_2m, ["k_dpmpp_2m"], default_schedule="Karras"),
    _spec(
        "DPM++ SDE",
        k.sample_dpmpp_sde,
        ["k_dpmpp_sde"],
        default_schedule="Karras",
        stochastic=True,
        uses_eta=True,
    ),
    _spec(
        "DPM++ 2M SDE",
        k.sample_dpmpp_2m_sde,
        ["k_dpmpp_2m_sde"],
        default_schedule="Exponential",
        stochastic=True,
        uses_eta=True,
    ),
    _spec(
        "DPM++ 3M SDE",
        k.sample_dpmpp_3m_sde,
        ["k_dpmpp_3m_sde"],
        default_schedule="Exponential",
        stochastic=True,
        uses_eta=True,
    ),
    _spec(
        "DPM++ 2S a",
        k.sample_dpmpp_2s_ancestral,
        ["k_dpmpp_2s_a"],
        default_schedule="Karras",
        stochastic=True,
        uses_eta=True,
    ),
    _spec(
        "Euler a",
        k.sample_euler_ancestral,
        ["k_euler_a", "k_euler_ancestral"],
        stochastic=True,
        uses_eta=True,
    ),
    _spec("Euler", k.sample_euler, ["k_euler"]),
    _spec("LMS", k.sample_lms, ["k_lms"]),
    _spec("Heun", k.sample_heun, ["k_heun"]),
    _spec("DPM2", k.sample_dpm_2, ["k_dpm_2"], default_schedule="Karras", discard_penultimate_sigma=True),
    _spec(
        "DPM2 a",
        k.sample_dpm_2_ancestral,
        ["k_dpm_2_a"],
        default_schedule="Karras",
        discard_penultimate_sigma=True,
        stochastic=True,
        uses_eta=True,
    ),
    _spec(
        "DDIM",
        k.sample_ddim,
        ["ddim"],
        default_schedule="DDIM",
        schedules=("DDIM", *ALL_SCHEDULES),
        uses_eta=True,
    ),
    _spec("PLMS", k.sample_plms, ["plms"], default_schedule="DDIM", schedules=("DDIM", *ALL_SCHEDULES)),
    _spec(
        "UniPC",
        k.sample_unipc,
        ["unipc"],
        default_schedule="Uniform",
        schedules=("Uniform", "Karras", "Exponential"),
    ),
    _spec("LCM", k.sample_lcm, ["lcm", "k_lcm"], default_schedule="SGM Uniform", stochastic=True),
)

_BY_KEY = {key.lower(): s for s in SAMPLERS for key in (s.name, *s.aliases)}


def get_sampler(name: str) -> SamplerSpec:
    """Look up a sampler by A1111 name or alias (case-insensitive); unknown names list the valid ones."""
    spec = _BY_KEY.get((name or "").strip().lower())
    if spec is None:
        raise SDStudioError(
            f"unknown sampler {name!r}; choose one of: {', '.join(s.name for s in SAMPLERS)}",
            field="sampler_name",
        )
    return spec


def list_samplers() -> list[SamplerSpec]:
    return list(SAMPLERS)


def _canonical_schedule(schedule_type: str | None) -> str:
    if not schedule_type:
        return "Automatic"
    lookup = {s.lower().replace(" ", "_"): s for s in (*SCHEDULE_TYPES, "DDIM")}
    key = schedule_type.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in lookup:
        raise SDStudioError(
            f"unknown schedule type {schedule_type!r}; choose one of {', '.join(SCHEDULE_TYPES)}",
            field="scheduler",
        )
    return lookup[key]


def ddim_sigmas(steps: int, schedule: DiscreteSchedule, steps_offset: int = 1) -> torch.Tensor:
    """CompVis/A1111 DDIM "uniform" timesteps (every T//steps, plus offset) as sigmas, ending in 0."""
    T = len(schedule.sigmas)
    stride = max(T // steps, 1)
    t = (torch.arange(0, T, stride)[:steps] + steps_offset).clamp(max=T - 1).flip(0)
    return torch.cat([schedule.sigmas[t], schedule.sigmas.new_zeros(1)])


def sigmas_for(
    spec: SamplerSpec, schedule_type: str | None, steps: int, schedule: DiscreteSchedule
) -> torch.Tensor:
    """The (steps + 1,) sigmas this sampler runs for ``steps`` steps under ``schedule_type``."""
    resolved = spec.resolve_schedule(schedule_type)
    n = steps + 1 if spec.discard_penultimate_sigma else steps
    sigmas = ddim_sigmas(n, schedule) if resolved == "DDIM" else build_sigmas(resolved, n, schedule)
    if spec.discard_penultimate_sigma:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas
