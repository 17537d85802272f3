"""Deterministic DDIM sampling (eta = 0) and its inversion, z_0 -> z_T.

Song et al., "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. (12) with sigma = 0;
the "exact" inversion solves the implicit (backward-Euler) equation of each step by
fixed-point iteration, after Hong et al., "On Exact Inversion of DPM-Solvers" (CVPR 2024).
Timesteps and alpha_bar come from a diffusers scheduler, so ``ddim_invert`` undoes exactly
what ``DDIMScheduler.step`` generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class DDIMSchedule:
    """Timesteps t_1 > ... > t_n of a sampling run, with alpha_bar at t_i and at the step after it."""

    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]  # at timesteps[i]
    alpha_bar_prev: tuple[float, ...]  # at the timestep the step from timesteps[i] lands on


def ddim_schedule(scheduler, steps: int) -> DDIMSchedule:
    """The schedule ``scheduler`` (a diffusers DDIMScheduler) uses for ``steps`` steps, in float64."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if steps > scheduler.config.num_train_timesteps:
        raise ValueError(f"steps must be at most {scheduler.config.num_train_timesteps}, got {steps}")
    scheduler = type(scheduler).from_config(scheduler.config)  # leave the caller's state alone
    scheduler.set_timesteps(steps)
    alphas_cumprod = scheduler.alphas_cumprod.double()
    final = float(scheduler.final_alpha_cumprod)
    ratio = scheduler.config.num_train_timesteps // steps
    ts = [int(t) for t in scheduler.timesteps]
    prev = [float(alphas_cumprod[t - ratio]) if t - ratio >= 0 else final for t in ts]
    return DDIMSchedule(tuple(ts), tuple(float(alphas_cumprod[t]) for t in ts), tuple(prev))


def ddim_step(z_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """z_t -> z_prev, Eq. (12) of Song et al. with sigma = 0."""
    x0 = (z_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5  # 1. predicted z_0
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps  # 2. point it back to the lower noise level


def ddim_inverse_step(z_prev: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """z_prev -> z_t: ``ddim_step`` solved for z_t, for a given eps."""
    x0 = (z_prev - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps


@torch.inference_mode()
def ddim_sample(
    eps: Callable, z_T: torch.Tensor, schedule: DDIMSchedule, extra_args: dict | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from z_T to z_0 with ``eps(z, t, **extra_args)``."""
    extra_args = extra_args or {}
    z = z_T
    for i, (t, a_t, a_prev) in enumerate(zip(schedule.timesteps, schedule.alpha_bar, schedule.alpha_bar_prev)):
        z = ddim_step(z, eps(z, t, **extra_args), a_t, a_prev)
        if callback is not None:
            callback({"i": i, "t": t, "z": z})
    return z


@torch.inference_mode()
def ddim_invert(
    eps: Callable,
    z_0: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    exact: bool = False,
    refine_iters: int = 3,
    extra_args: dict | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DDIM inversion z_0 -> z_T, the steps of ``ddim_sample`` taken backwards.

    Naive (Tree-Ring): each step uses eps(z_prev, t), the prediction at the current point.
    ``exact=True``: then ``refine_iters`` fixed-point iterations of
    z_t <- inverse_step(z_prev, eps(z_t, t)), the implicit equation the sampler's step
    defines (backward Euler, Hong et al. CVPR 2024); each costs one more eps evaluation.
    """
    if not isinstance(refine_iters, int) or refine_iters < 0:
        raise ValueError(f"refine_iters must be a non-negative integer, got {refine_iters!r}")
    extra_args = extra_args or {}
    z = z_0
    steps = list(zip(schedule.timesteps, schedule.alpha_bar, schedule.alpha_bar_prev))[::-1]
    for i, (t, a_t, a_prev) in enumerate(steps):
        z_prev = z
        z = ddim_inverse_step(z_prev, eps(z_prev, t, **extra_args), a_t, a_prev)  # 1. naive guess
        for _ in range(refine_iters if exact else 0):
            z = ddim_inverse_step(z_prev, eps(z, t, **extra_args), a_t, a_prev)  # 2. fixed point
        if callback is not None:
            callback({"i": i, "t": t, "z": z})
    return z
