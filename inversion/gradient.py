"""Gradient-based decoder inversion, the baseline of Hong et al., "On Exact Inversion of
DPM-Solvers" (CVPR 2024): Adam on ||D(z) - x||^2 with autograd through the decoder."""

from __future__ import annotations

import time
from typing import Callable, Literal

import torch

from ._checks import check_common, check_positive
from .record import InversionRecord
from .lr_schedule import cosine_warmup


def gradient(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 100,
    lr: float = 0.1,
    schedule: Literal["cosine", "constant"] = "cosine",
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """Adam on the summed squared error ||D(z) - x||^2 (Hong et al., CVPR 2024).

    ``lr`` is for unit-variance (scaled) latents. ``schedule="cosine"``: linear warm-up over
    the first 10% of steps, then cosine to zero; ``"constant"``: fixed ``lr``. The only
    method that builds an autograd graph, and it does so itself: it may be called inside
    ``torch.inference_mode()`` like the others. The residual E(D(z)) - E(x) is not computed
    (it would cost an extra encoder pass), so ``record.residual`` is NaN and ``tol`` is unused.
    """
    check_common(iters, tol, dtype)
    check_positive("lr", lr)
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be one of {('cosine', 'constant')}, got {schedule!r}")
    with torch.inference_mode(False):  # tensors made in inference mode cannot enter autograd: copy them
        return _adam_through_decoder(encode, decode, x.clone(), None if z0 is None else z0.clone(), iters=iters, lr=lr,
                                     schedule=schedule, dtype=dtype, callback=callback)


def _adam_through_decoder(encode, decode, x, z0, iters, lr, schedule, dtype, callback):
    out_dtype, dtype = x.dtype, dtype or x.dtype
    t0 = time.perf_counter()
    x = x.to(dtype)
    with torch.no_grad():
        z_init = encode(x) if z0 is None else z0
    z = z_init.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    factor = (lambda k: cosine_warmup(k, iters)) if schedule == "cosine" else (lambda k: 1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    pixel_errors = []
    numel = x[0].numel()
    for k in range(iters):
        with torch.enable_grad():
            diff = (decode(z.to(dtype)) - x).float()
            loss = diff.pow(2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
        per_sample = diff.detach().flatten(1).norm(dim=1) / numel**0.5
        pixel_errors.append(per_sample.cpu())
        if callback is not None:
            callback({"i": k, "z": z.detach(), "residual": torch.full_like(per_sample, float("nan")).cpu(),
                      "pixel_error": per_sample.cpu(), "loss": loss.item()})
        opt.step()
        sched.step()
    n = len(x)
    pixel = torch.stack(pixel_errors) if pixel_errors else torch.empty(0, n)
    record = InversionRecord("gradient", torch.full((n,), iters, dtype=torch.long),
                             torch.full_like(pixel, float("nan")), pixel, time.perf_counter() - t0)
    return z.detach().to(out_dtype), record
