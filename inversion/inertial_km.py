"""Inertial Krasnoselskii-Mann iteration, Eqs. (10-11) of Hong et al. (NeurIPS 2024)."""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_common, check_positive
from .record import InversionRecord, ResidualTracker


@torch.inference_mode()
def inertial_km(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 50,
    alpha: float = 0.2,
    lam: float = 0.5,
    beta: float = 1.0,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """Inertial KM, Eqs. (10-11) of Hong et al. (NeurIPS 2024):
    y_k = z_k + alpha (z_k - z_{k-1});  z_{k+1} = y_k - 2 lam beta T(y_k),  T(z) = E(D(z)) - E(x).

    ``beta`` is the cocoercivity constant of T; the paper's convergence condition
    lam (1 - alpha + 2 alpha^2) < (1 - alpha)^2 is enforced. The defaults give a step
    2 lam beta = 1 on unit-variance latents (the step is scale-free, like Eq. 4).
    """
    check_common(iters, tol, dtype)
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
    check_positive("lam", lam)
    check_positive("beta", beta)
    if not lam * (1 - alpha + 2 * alpha**2) < (1 - alpha) ** 2:
        raise ValueError(
            f"lam={lam} and alpha={alpha} violate lam (1 - alpha + 2 alpha^2) < (1 - alpha)^2 "
            f"(the largest lam for this alpha is {(1 - alpha) ** 2 / (1 - alpha + 2 * alpha**2):.4g})"
        )
    dtype = dtype or x.dtype
    run = ResidualTracker("inertial_km", encode, decode, x, dtype=dtype, tol=tol, callback=callback)
    z = (run.Ex if z0 is None else z0).float().clone()
    z_prev = z.clone()
    for k in range(iters):
        y = z + alpha * (z - z_prev)  # 1. inertial extrapolation, Eq. (10)
        idx, r = run.residual(y, k)  # 2. T(y_k)
        z_prev[idx] = z[idx]
        z[idx] = y[idx] - 2 * lam * beta * r  # 3. relaxed forward step, Eq. (11)
        if run.done:
            break
    return run.finish(z, x.dtype)
