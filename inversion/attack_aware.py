"""Attack-aware forward step: ringmark's extension of Eq. (4) of Hong et al. (NeurIPS 2024) to an
image that was edited after it was decoded. Each iteration first fits the edit, then steps:

    (a_c, b_c) = argmin_{a, b} sum_{valid pixels of channel c} (a x + b - D(z))^2     (closed form)
    x_hat(z) = valid * (a x + b) + (1 - valid) * D(z)
    z <- z - rho (E(D(z)) - E(x_hat(z)))

so a per-channel gain and offset (brightness, contrast, a colour cast) is undone in closed form at
every step, and the pixels the edit destroyed (``valid`` False: clipped to black or white by
default) are filled from the decoder's own rendering instead of pulling z towards the clip. With
every pixel valid and (a, b) = (1, 0) it is the forward step. The gain and offset are not
identifiable from x alone (D(z) = a x + b fits for any a): the iteration keeps what its start
``z0`` implies, so start it from an image whose brightness was already estimated
(``watermark.photometric``); it then refines that estimate and stops fitting the clipped pixels.
Each iteration costs one decoder and two encoder passes (E(x_hat) moves with z). With ``memory``
> 0 the step is Anderson-mixed (``inversion.anderson``) over the same moving target.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch

from ._checks import check_common, check_positive
from .anderson import anderson
from .fixed_point import fixed_point
from .record import InversionRecord

CLIP = 1 - 1 / 255  # |x| at or above this (images in [-1, 1]): a pixel clipped to black or white in 8 bits
MIN_VARIANCE = 1e-4  # a channel flatter than this (in [-1, 1] units squared) keeps gain 1, offset 0


def unclipped(x: torch.Tensor) -> torch.Tensor:
    """The pixels of ``x`` (B, C, H, W) in [-1, 1] that no clip at black or white touched."""
    return x.abs() < CLIP


def affine_fit(x: torch.Tensor, y: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample and channel, (a, b) minimising sum over ``valid`` of (a x + b - y)^2, shaped (B, C, 1, 1);
    least squares of one variable in closed form (a = cov / var)."""
    w = valid.float()
    n = w.sum((2, 3), keepdim=True).clamp_min(1)
    mx, my = (w * x).sum((2, 3), keepdim=True) / n, (w * y).sum((2, 3), keepdim=True) / n
    var = (w * (x - mx) ** 2).sum((2, 3), keepdim=True) / n
    cov = (w * (x - mx) * (y - my)).sum((2, 3), keepdim=True) / n
    flat = var < MIN_VARIANCE
    a = torch.where(flat, torch.ones_like(var), cov / var.clamp_min(MIN_VARIANCE))
    b = torch.where(flat, torch.zeros_like(my), my - a * mx)
    return a, b


@torch.inference_mode()
def attack_aware(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 10,
    rho: float = 0.5,
    valid: torch.Tensor | None = None,
    memory: int = 0,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """The attack-aware forward step (module docstring). ``valid`` (x's shape, bool): the pixels to
    fit; default ``unclipped(x)``. ``memory``: 0, the forward step; else Anderson mixing of that many
    past steps. ``z0`` defaults to E(x). The networks run in ``dtype`` (default:
    x's); the iterate, the fit and x_hat are kept in float32."""
    check_common(iters, tol, dtype)
    check_positive("rho", rho)
    if not isinstance(memory, int) or isinstance(memory, bool) or memory < 0:
        raise ValueError(f"memory must be a non-negative integer, got {memory!r}")
    dtype = dtype or x.dtype
    xf = x.float()
    valid = unclipped(xf) if valid is None else valid.to(x.device, torch.bool).expand_as(xf)

    def target(decoded: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        d, v, xi = decoded.float(), valid[idx], xf[idx]
        a, b = affine_fit(xi, d, v)
        x_hat = torch.where(v, a * xi + b, d)
        return encode(x_hat.to(dtype)).float()

    # the forward step (Anderson-mixed with memory), with E(x_hat(z_k)) in place of E(x)
    step = partial(anderson, memory=memory) if memory else fixed_point
    z, record = step(encode, decode, x, z0=z0, iters=iters, rho=rho, tol=tol, dtype=dtype, callback=callback,
                     target=target)
    record.method = "attack_aware"
    return z, record
