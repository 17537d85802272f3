"""What a decoder-inversion run did: iterations, residuals, pixel errors, time."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

Tensor = torch.Tensor


@dataclass
class InversionRecord:
    """Per-iteration history of one batched run.

    ``residual[k, b]`` is the relative residual ||E(D(z)) - E(x)|| / ||E(x)|| and
    ``pixel_error[k, b]`` the RMS pixel error ||D(z) - x|| / sqrt(numel) of sample b at the
    iterate that step k started from; NaN where the sample had already stopped (or, for
    the ``gradient`` method, where the residual is not computed).
    """

    method: str
    iterations: Tensor  # (B,) iterations each sample ran
    residual: Tensor  # (K, B)
    pixel_error: Tensor  # (K, B)
    seconds: float = 0.0


def _per_sample_norm(v: Tensor) -> Tensor:
    return v.float().flatten(1).norm(dim=1)


class ResidualTracker:
    """Shared bookkeeping of the gradient-free methods (Eqs. 4, 10-11 and Adam).

    It evaluates T(z) = E(D(z)) - E(x) (or E(D(z)) - ``target``, an E(x) that moves with z) for the
    samples still running, records the relative
    residual and the pixel error, freezes samples whose relative residual fell below ``tol``,
    and calls ``callback`` with a small dict per iteration.
    """

    def __init__(self, method: str, encode: Callable, decode: Callable, x: Tensor, dtype, tol, callback,
                 target: Callable | None = None):
        self.method, self.encode, self.decode = method, encode, decode
        self.target = target  # target(D(z), idx) -> what E(D(z)) is driven to; default E(x), fixed
        self.dtype = dtype
        self.x = x.to(dtype)
        self.tol, self.callback = tol, callback
        self.t0 = time.perf_counter()
        self.Ex = encode(self.x).float()  # E is the posterior mean: the callable's job
        self.Ex_norm = _per_sample_norm(self.Ex).clamp_min(1e-12)
        self.active = torch.ones(len(x), dtype=torch.bool, device=x.device)
        self.iterations = torch.zeros(len(x), dtype=torch.long)
        self.residuals: list[Tensor] = []
        self.pixel_errors: list[Tensor] = []

    def residual(self, z: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """T(z) for the running samples; returns (indices still to update, their residual)."""
        idx = self.active.nonzero().squeeze(1)
        x_hat = self.decode(z[idx].to(self.dtype))
        goal = self.Ex[idx] if self.target is None else self.target(x_hat, idx)
        r = self.encode(x_hat).float() - goal
        rel = torch.full((len(self.active),), float("nan"))
        pix = torch.full((len(self.active),), float("nan"))
        rel[idx.cpu()] = (_per_sample_norm(r) / self.Ex_norm[idx]).cpu()
        pix[idx.cpu()] = (_per_sample_norm(x_hat - self.x[idx]) / x_hat[0].numel() ** 0.5).cpu()
        self.residuals.append(rel)
        self.pixel_errors.append(pix)
        if self.callback is not None:
            self.callback({"i": k, "z": z, "residual": rel, "pixel_error": pix})
        if self.tol is not None:
            keep = rel[idx.cpu()] > self.tol
            self.active[idx[~keep.to(idx.device)]] = False
            idx, r = idx[keep.to(idx.device)], r[keep.to(r.device)]
        self.iterations[idx.cpu()] += 1
        return idx, r

    @property
    def done(self) -> bool:
        return not bool(self.active.any())

    def finish(self, z: Tensor, out_dtype) -> tuple[Tensor, InversionRecord]:
        k = len(self.residuals)
        record = InversionRecord(
            method=self.method,
            iterations=self.iterations,
            residual=torch.stack(self.residuals) if k else torch.empty(0, len(self.active)),
            pixel_error=torch.stack(self.pixel_errors) if k else torch.empty(0, len(self.active)),
            seconds=time.perf_counter() - self.t0,
        )
        return z.to(out_dtype), record
