"""Gradient-free Adam: the practical method of Hong et al. (NeurIPS 2024), Adam fed the
residual E(D(z)) - E(x) in place of a gradient."""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_common, check_positive
from .record import InversionRecord, ResidualTracker
from .lr_schedule import cosine_warmup


@torch.inference_mode()
def adam(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 50,
    lr: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    final_lr_factor: float = 0.1,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """Adam on the residual T(z) = E(D(z)) - E(x), Hong et al. (NeurIPS 2024), Sec. 4.

    ``lr`` is for unit-variance (scaled) latents, as the paper's 0.01 for Stable Diffusion.
    Schedule: linear warm-up over 10% of ``iters``, cosine down to ``final_lr_factor * lr`` at 80%,
    held there. The Adam moments are written out here rather than taken from torch.optim,
    because samples of a batch stop one by one (``tol``) and their moments must freeze too.
    """
    check_common(iters, tol, dtype)
    check_positive("lr", lr)
    if not all(0 <= b < 1 for b in betas):
        raise ValueError(f"betas must be in [0, 1), got {betas!r}")
    dtype = dtype or x.dtype
    run = ResidualTracker("adam", encode, decode, x, dtype=dtype, tol=tol, callback=callback)
    z = (run.Ex if z0 is None else z0).float().clone()
    m, v = torch.zeros_like(z), torch.zeros_like(z)
    step = torch.zeros(len(z), device=z.device)
    shape = (-1,) + (1,) * (z.dim() - 1)
    for k in range(iters):
        idx, r = run.residual(z, k)  # 1. T(z_k) stands in for the gradient
        step[idx] += 1
        t = step[idx].view(shape)
        m[idx] = betas[0] * m[idx] + (1 - betas[0]) * r  # 2. first and second moments
        v[idx] = betas[1] * v[idx] + (1 - betas[1]) * r * r
        m_hat, v_hat = m[idx] / (1 - betas[0] ** t), v[idx] / (1 - betas[1] ** t)  # 3. bias correction
        lr_k = lr * cosine_warmup(k, iters, warmup=0.1, hold=0.8, final=final_lr_factor)
        z[idx] -= lr_k * m_hat / (v_hat.sqrt() + eps)  # 4. Adam update
        if run.done:
            break
    return run.finish(z, x.dtype)
