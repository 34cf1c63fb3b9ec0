"""Opt-in speed techniques for the sampling loop (``--fast``, API ``fast``, A1111 ``s_min_uncond``).

Off by default: a request without them samples bit-identically to the plain path. What each
technique costs in quality and gains in time is measured by ``bench/suite.py`` and
``bench/quality_steps.py`` (BENCHMARKS.md). ``fast`` = DeepCache with interval 3.

* negative guidance minimum sigma (A1111 ``s_min_uncond``, "NGMS"): below that sigma the
  unconditional UNet pass is skipped on alternate calls (A1111), or on every call (A1111's "NGMS
  all steps" option, i.e. CFG truncation at low noise; measured, not used by fast mode);
* DeepCache (Ma et al. 2023): the deep UNet features are reused for ``interval - 1`` calls out of
  ``interval`` (:mod:`sdstudio.pipelines.deepcache`).
"""

from __future__ import annotations

from dataclasses import dataclass

from sdstudio.pipelines.deepcache import DeepCacheUNet, supports_deepcache

FAST_DEEPCACHE_INTERVAL = 3  # DeepCache's own SD default (cache_interval=3, shallowest branch)
FAST_MIN_UNCOND_SIGMA = 0.0  # NGMS in fast mode: off (measured: adds quality cost for ~10% of the rows)
FAST_UNCOND_EVERY_STEP = False  # True = "NGMS all steps" (measured: too lossy, BENCHMARKS.md)


@dataclass(frozen=True)
class SpeedOptions:
    """How one batch is sampled faster than the plain path (defaults: not at all)."""

    s_min_uncond: float = 0.0
    uncond_every_step: bool = False
    deepcache_interval: int = 1  # 1 = off

    @property
    def is_default(self) -> bool:
        return self == SpeedOptions()

    @classmethod
    def from_request(cls, request) -> SpeedOptions:
        """The options a GenerationRequest asks for: ``fast`` and/or A1111's ``s_min_uncond``."""
        s_min = float(getattr(request, "s_min_uncond", 0.0) or 0.0)
        if not getattr(request, "fast", False):
            return cls(s_min_uncond=s_min)
        return cls(
            s_min_uncond=s_min or FAST_MIN_UNCOND_SIGMA,  # the request's NGMS still applies
            uncond_every_step=FAST_UNCOND_EVERY_STEP,
            deepcache_interval=FAST_DEEPCACHE_INTERVAL,
        )

    def unet_for(self, unet, compiled=None):
        """The UNet callable for one batch: a fresh DeepCache wrapper, the ``compiled`` UNet (another
        runtime's, e.g. OpenVINO) while it still matches ``unet``'s weights, or ``unet`` itself."""
        if self.deepcache_interval > 1 and supports_deepcache(unet):
            return DeepCacheUNet(unet, self.deepcache_interval)
        if compiled is not None and compiled.matches(unet):
            return compiled
        return unet
