"""Deterministic DDIM sampling (eta = 0) and its inversion, z_0 -> z_T.

Song et al., "Denoising Diffusion Implicit Models" (ICLR 2021), Eq. (12) with sigma = 0;
the "exact" inversion solves the implicit (backward-Euler) equation of each step by
fixed-point iteration, after Hong et al., "On Exact Inversion of DPM-Solvers" (CVPR 2024).
Timesteps and alpha_bar are plain numbers (the model adapter reads them off its scheduler),
and a step lands where ``DDIMScheduler.step`` lands, so ``ddim_invert`` undoes what it generates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch


@dataclass(frozen=True)
class DDIMSchedule:
    """Timesteps t_1 > ... > t_n of a sampling run, with alpha_bar at t_i and at the step after it."""

    timesteps: tuple[int, ...]
    alpha_bar: tuple[float, ...]  # at timesteps[i]
    alpha_bar_prev: tuple[float, ...]  # at the timestep the step from timesteps[i] lands on


def ddim_schedule(alphas_cumprod: Sequence[float], timesteps: Sequence[int], final_alpha_cumprod: float) -> DDIMSchedule:
    """The schedule of a DDIM run over ``timesteps`` (descending), in float64.

    Each step from t lands on t - T // n (T = len(alphas_cumprod), n = len(timesteps)), as
    diffusers' ``DDIMScheduler.step`` does; below 0 it lands on ``final_alpha_cumprod``.
    """
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 <= t < len(alphas_cumprod) for t in ts):
        raise ValueError(f"timesteps must be a non-empty list in [0, {len(alphas_cumprod)}), got {ts[:3]}...")
    ratio = len(alphas_cumprod) // len(ts)
    prev = [float(alphas_cumprod[t - ratio]) if t - ratio >= 0 else float(final_alpha_cumprod) for t in ts]
    return DDIMSchedule(tuple(ts), tuple(float(alphas_cumprod[t]) for t in ts), tuple(prev))


def ddim_step(z_t: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """z_t -> z_prev, Eq. (12) of Song et al. with sigma = 0."""
    x0 = (z_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5  # 1. predicted z_0
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps  # 2. point it back to the lower noise level


def ddim_inverse_step(z_prev: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """z_prev -> z_t: ``ddim_step`` solved for z_t, for a given eps."""
    x0 = (z_prev - (1 - a_prev) ** 0.5 * eps) / a_prev**0.5
    return a_t**0.5 * x0 + (1 - a_t) ** 0.5 * eps


def ddim_inverse_step_v(z_prev: torch.Tensor, z_t: torch.Tensor, eps: torch.Tensor, a_t: float,
                        a_prev: float) -> torch.Tensor:
    """z_prev -> z_t: ``ddim_step`` solved for z_t, for the v = sqrt(a) eps - sqrt(1 - a) z_0 that
    eps(z_t) gives (Salimans & Ho, ICLR 2022).

    In v the step is a rotation, z_prev = A z_t + B v with A = cos(phi_t - phi_prev) and
    B = sin(phi_t - phi_prev) (phi = arccos sqrt(a)), so holding v fixed contracts by |B/A| per
    fixed-point iteration; holding eps fixed does not as a_t -> 0, where eps(z_t) ~ z_t (the
    first step of a zero-terminal-SNR schedule).
    """
    v = (eps - (1 - a_t) ** 0.5 * z_t) / a_t**0.5  # 1. v from eps at z_t
    A = (a_prev * a_t) ** 0.5 + ((1 - a_prev) * (1 - a_t)) ** 0.5  # 2. z_prev = A z_t + B v
    B = ((1 - a_prev) * a_t) ** 0.5 - (a_prev * (1 - a_t)) ** 0.5
    return (z_prev - B * v) / A


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


def ddim_invert_graph(
    eps: Callable,
    z_0: torch.Tensor,
    schedule: DDIMSchedule,
    *,
    exact: bool = False,
    refine_iters: int = 3,
    hold: Literal["eps", "v"] = "eps",
    extra_args: dict | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """DDIM inversion z_0 -> z_T, the steps of ``ddim_sample`` taken backwards.

    Naive (Tree-Ring): each step uses the prediction at the current point, eps(z_prev, t).
    ``exact=True``: then ``refine_iters`` fixed-point iterations of the implicit equation the
    sampler's step defines (backward Euler, Hong et al. CVPR 2024), each one more eps evaluation.
    ``hold``: which prediction each iteration holds fixed while it solves the step for z_t: "eps"
    (``ddim_inverse_step``), or "v" (``ddim_inverse_step_v``), the one that contracts for
    v-prediction models and at alpha_bar_t -> 0 (zero terminal SNR). Same equation, same solution.
    """
    if not isinstance(refine_iters, int) or refine_iters < 0:
        raise ValueError(f"refine_iters must be a non-negative integer, got {refine_iters!r}")
    if hold not in ("eps", "v"):
        raise ValueError(f"hold must be one of ('eps', 'v'), got {hold!r}")
    extra_args = extra_args or {}

    def solve(z_prev, z_t, t, a_t, a_prev):
        e = eps(z_t, t, **extra_args)
        if hold == "eps":
            return ddim_inverse_step(z_prev, e, a_t, a_prev)
        return ddim_inverse_step_v(z_prev, z_t, e, a_t, a_prev)

    z = z_0
    steps = list(zip(schedule.timesteps, schedule.alpha_bar, schedule.alpha_bar_prev))[::-1]
    for i, (t, a_t, a_prev) in enumerate(steps):
        z_prev = z
        z = solve(z_prev, z_prev, t, a_t, a_prev)  # 1. naive guess: the prediction at z_prev
        for _ in range(refine_iters if exact else 0):
            z = solve(z_prev, z, t, a_t, a_prev)  # 2. fixed point
        if callback is not None:
            callback({"i": i, "t": t, "z": z})
    return z


# the same steps without autograd; ``ddim_invert_graph`` keeps the graph, for attacks that
# backpropagate through the inversion (``watermark.bench.security``)
ddim_invert = torch.inference_mode()(ddim_invert_graph)
