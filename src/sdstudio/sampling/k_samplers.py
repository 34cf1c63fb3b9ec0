"""Samplers as free functions over a denoiser ``D(x, sigma) -> x0`` (k-diffusion style).

Each ``sample_*`` follows Karras et al. (2022) notation in VE space: ``x = x0 + sigma * eps``.
Signature: ``sample_x(model, x, sigmas, *, noise, callback, eta, s_noise, ctx)`` where ``noise``
is a ``NoiseSource`` (per-image generators, :mod:`sdstudio.sampling.noise`) and ``callback``
receives ``{"x", "i", "sigma", "denoised"}`` after every step. Nothing here knows about models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Callback = Callable[[dict], None] | None


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from sigma_from to sigma_to."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    return (sigma_to**2 - sigma_up**2) ** 0.5, sigma_up


def _report(callback: Callback, x: torch.Tensor, i: int, sigma: torch.Tensor, denoised: torch.Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "denoised": denoised})


def _t(sigma: torch.Tensor) -> torch.Tensor:  # DPM-Solver time: t = -log(sigma)
    return sigma.log().neg()


def _sigma(t: torch.Tensor) -> torch.Tensor:
    return t.neg().exp()


def _run(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return model(x, sigma * x.new_ones([x.shape[0]]))


@torch.no_grad()
def sample_euler(
    model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None, s_churn=0.0
):
    """Euler method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 with optional churn)."""
    n = len(sigmas) - 1
    for i in range(n):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_churn > 0 else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + noise.next() * s_noise * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = _run(model, x, sigma_hat)
        _report(callback, x, i, sigmas[i], denoised)
        x = x + to_d(x, sigma_hat, denoised) * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None):
    """Ancestral Euler: an Euler step down to sigma_down, then fresh noise up to sigma_next."""
    eta = 1.0 if eta is None else eta
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), eta)
        _report(callback, x, i, sigmas[i], denoised)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise.next() * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """Heun's second-order method (Karras et al. 2022, Algorithm 1)."""
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        dt = sigmas[i + 1] - sigmas[i]
        if sigmas[i + 1] == 0:
            x = x + d * dt
            continue
        x_2 = x + d * dt
        d_2 = to_d(x_2, sigmas[i + 1], _run(model, x_2, sigmas[i + 1]))
        x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """DPM-Solver-2 (Lu et al. 2022) as k-diffusion's midpoint-in-log-sigma variant."""
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])
            continue
        sigma_mid = sigmas[i].log().lerp(sigmas[i + 1].log(), 0.5).exp()
        x_2 = x + d * (sigma_mid - sigmas[i])
        d_2 = to_d(x_2, sigma_mid, _run(model, x_2, sigma_mid))
        x = x + d_2 * (sigmas[i + 1] - sigmas[i])
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None):
    """Ancestral DPM-Solver-2."""
    eta = 1.0 if eta is None else eta
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), eta)
        _report(callback, x, i, sigmas[i], denoised)
        d = to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_down_t = sigmas.new_tensor(sigma_down)
            sigma_mid = sigmas[i].log().lerp(sigma_down_t.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = to_d(x_2, sigma_mid, _run(model, x_2, sigma_mid))
            x = x + d_2 * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise.next() * s_noise * sigma_up
    return x


def _lms_coeff(order: int, t, i: int, j: int) -> float:
    from scipy import integrate

    def fn(tau: float) -> float:
        prod = 1.0
        for k in range(order):
            if j != k:
                prod *= (tau - t[i - k]) / (t[i - j] - t[i - k])
        return prod

    return integrate.quad(fn, t[i], t[i + 1], epsrel=1e-4)[0]


@torch.no_grad()
def sample_lms(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None, order=4):
    """Linear multistep (k-diffusion ``sample_lms``; A1111 "LMS", old name k_lms)."""
    sigmas_np = sigmas.double().cpu().numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        ds.append(to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        cur = min(i + 1, order)
        coeffs = [_lms_coeff(cur, sigmas_np, i, j) for j in range(cur)]
        x = x + sum(c * d for c, d in zip(coeffs, reversed(ds)))
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None):
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022b, arXiv 2211.01095)."""
    eta = 1.0 if eta is None else eta
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(float(sigmas[i]), float(sigmas[i + 1]), eta)
        _report(callback, x, i, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t(sigmas[i]), _t(sigmas.new_tensor(sigma_down))
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = _run(model, x_2, _sigma(s))
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise.next() * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None, r=0.5):
    """DPM-Solver++ (stochastic, 2 evaluations a step), Brownian-tree noise per image seed."""
    eta = 1.0 if eta is None else eta
    brownian = noise.brownian(x, sigmas)
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        sd, su = get_ancestral_step(float(_sigma(t)), float(_sigma(s)), eta)
        s_ = _t(sigmas.new_tensor(sd))
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + brownian(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = _run(model, x_2, _sigma(s))
        sd, su = get_ancestral_step(float(_sigma(t)), float(_sigma(t_next)), eta)
        t_next_ = _t(sigmas.new_tensor(sd))
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + brownian(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """DPM-Solver++(2M), multistep second order (arXiv 2211.01095, Algorithm 2)."""
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            denoised_d = denoised
        else:
            r = (t - _t(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None):
    """DPM-Solver++(2M) SDE, midpoint variant (k-diffusion ``sample_dpmpp_2m_sde``)."""
    eta = 1.0 if eta is None else eta
    brownian = noise.brownian(x, sigmas)
    old_denoised, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = (
                    x
                    + brownian(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * (-2 * eta_h).expm1().neg().sqrt()
                    * s_noise
                )
            h_last = h
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, *, noise=None, callback=None, eta=1.0, s_noise=1.0, ctx=None):
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``)."""
    eta = 1.0 if eta is None else eta
    brownian = noise.brownian(x, sigmas)
    denoised_1 = denoised_2 = h_1 = h_2 = None
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = (
                    x
                    + brownian(sigmas[i], sigmas[i + 1])
                    * sigmas[i + 1]
                    * (-2 * h * eta).expm1().neg().sqrt()
                    * s_noise
                )
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


@torch.no_grad()
def sample_lcm(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """Latent Consistency Model sampling (Luo et al. 2023): jump to x0, re-noise to the next sigma."""
    for i in range(len(sigmas) - 1):
        denoised = _run(model, x, sigmas[i])
        _report(callback, x, i, sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise.next()
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, *, noise=None, callback=None, eta=0.0, s_noise=1.0, ctx=None):
    """DDIM (Song et al. 2021, eq. 12) written in VE space; eta 0 is deterministic."""
    eta = 0.0 if eta is None else eta
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _run(model, x, sigma)
        _report(callback, x, i, sigma, denoised)
        eps = (x - denoised) / sigma
        a, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)  # alphas_cumprod at t and t_prev
        s = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).clamp(min=0).sqrt()
        x = denoised + ((1 - a_prev - s**2).clamp(min=0).sqrt() * eps) / a_prev.sqrt()
        if eta and sigma_next > 0:
            x = x + noise.next() * s / a_prev.sqrt()
    return x


@torch.no_grad()
def sample_plms(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """Pseudo linear multistep (Liu et al. 2022, PNDM "PLMS"), 4th-order Adams-Bashforth on eps."""
    old_eps: list[torch.Tensor] = []

    def ddim_step(x_, sigma, sigma_next, eps):
        return x_ + eps * (sigma_next - sigma)  # eta=0 DDIM == Euler step in VE space

    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _run(model, x, sigma)
        _report(callback, x, i, sigma, denoised)
        eps = (x - denoised) / sigma
        if not old_eps and sigma_next > 0:  # first step: improved Euler (Heun) on eps
            x_next = ddim_step(x, sigma, sigma_next, eps)
            eps_next = (x_next - _run(model, x_next, sigma_next)) / sigma_next
            eps_prime = (eps + eps_next) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        elif len(old_eps) >= 3:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        else:
            eps_prime = eps
        x = ddim_step(x, sigma, sigma_next, eps_prime)
        old_eps = (old_eps + [eps])[-3:]
    return x


@torch.no_grad()
def sample_unipc(model, x, sigmas, *, noise=None, callback=None, eta=None, s_noise=1.0, ctx=None):
    """UniPC (Zhao et al. 2023) through diffusers' UniPCMultistepScheduler, driven by the denoiser.

    The scheduler works in VP space on discrete timesteps; the denoiser's eps prediction is fed to it
    (``x_vp = x / sqrt(1 + sigma^2)``). Timesteps come from the sigmas via ``ctx.schedule.sigma_to_t``.
    """
    from diffusers import UniPCMultistepScheduler

    config = dict(ctx.scheduler_config, prediction_type="epsilon")
    scheduler = UniPCMultistepScheduler.from_config(
        config, timestep_spacing="linspace", final_sigmas_type="zero"
    )
    n = len(sigmas) - 1
    timesteps = ctx.schedule.sigma_to_t(sigmas[:-1]).round().long()
    scheduler.set_timesteps(n)
    scheduler.timesteps = timesteps
    scheduler.sigmas = torch.cat([sigmas[:-1], sigmas.new_zeros(1)]).float()
    x_vp = x / (1 + sigmas[0] ** 2) ** 0.5
    for i in range(n):
        sigma = sigmas[i]
        x_ve = x_vp * (1 + sigma**2) ** 0.5
        denoised = _run(model, x_ve, sigma)
        _report(callback, x_ve, i, sigma, denoised)
        eps = (x_ve - denoised) / sigma
        x_vp = scheduler.step(eps, timesteps[i], x_vp).prev_sample
    return x_vp


SAMPLER_FUNCTIONS: dict[str, Any] = {
    name[len("sample_") :]: fn
    for name, fn in globals().items()
    if name.startswith("sample_") and callable(fn)
}
