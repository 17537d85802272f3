"""Encoder-only decoder inversion: z = E(x), the baseline every other method starts from."""

from __future__ import annotations

import time
from typing import Callable

import torch

from ._checks import check_common
from .record import InversionRecord


@torch.inference_mode()
def encoder(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 0,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """z = E(x), with E the posterior mean. Takes every method's keywords so that callers need
    not special-case it; ``decode``, ``z0``, ``iters``, ``tol`` and ``callback`` are unused."""
    check_common(iters, tol, dtype)
    t0 = time.perf_counter()
    z = encode(x.to(dtype or x.dtype))
    empty = torch.empty(0, len(x))
    record = InversionRecord("encoder", torch.zeros(len(x), dtype=torch.long), empty, empty.clone(),
                             time.perf_counter() - t0)
    return z.to(x.dtype), record
