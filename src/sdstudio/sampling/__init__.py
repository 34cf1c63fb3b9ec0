"""Sampling: noise schedules, samplers over a denoiser callable, seeded noise. No model code."""

from sdstudio.sampling.control import CancelToken, ProgressCallback, StepInfo
from sdstudio.sampling.noise import ImageNoise, slerp
from sdstudio.sampling.registry import SAMPLERS, SamplerSpec, get_sampler, list_samplers, sigmas_for
from sdstudio.sampling.schedules import SCHEDULE_TYPES, DiscreteSchedule

__all__ = [
    "SAMPLERS",
    "SCHEDULE_TYPES",
    "CancelToken",
    "DiscreteSchedule",
    "ImageNoise",
    "ProgressCallback",
    "SamplerSpec",
    "StepInfo",
    "get_sampler",
    "list_samplers",
    "sigmas_for",
    "slerp",
]
