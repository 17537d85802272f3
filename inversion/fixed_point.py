"""Forward step method, Eq. (4) of Hong et al., "Gradient-free Decoder Inversion in Latent
Diffusion Models" (NeurIPS 2024): z <- z - rho * (E(D(z)) - E(x))."""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_common, check_positive
from .record import InversionRecord, ResidualTracker


@torch.inference_mode()
def fixed_point(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 50,
    rho: float = 0.5,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
    target: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """Forward step method, Eq. (4) of Hong et al. (NeurIPS 2024).

    Converges when T(z) = E(D(z)) - E(x) is beta-cocoercive (Sec. 3.4) and 0 < rho < 2 beta. The step is
    scale-free (the residual is in latent units), so ``rho`` means the same for scaled
    (unit-variance) and unscaled latents. ``z0`` defaults to E(x), the posterior mean.
    The networks run in ``dtype`` (default: x's); the iterate is kept in float32. ``target(D(z),
    idx)``, if given, replaces E(x) by a goal that moves with z (``attack_aware`` uses it).
    """
    check_common(iters, tol, dtype)
    check_positive("rho", rho)
    dtype = dtype or x.dtype
    run = ResidualTracker("fixed_point", encode, decode, x, dtype=dtype, tol=tol, callback=callback, target=target)
    z = (run.Ex if z0 is None else z0).float().clone()
    for k in range(iters):
        idx, r = run.residual(z, k)  # 1. T(z_k) = E(D(z_k)) - E(x)
        z[idx] -= rho * r  # 2. z_{k+1} = z_k - rho T(z_k), Eq. (4)
        if run.done:
            break
    return run.finish(z, x.dtype)
