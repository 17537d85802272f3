"""Encoder-only decoder inversion: z = E(x), the baseline every other method starts from."""

from __future__ import annotations

import time
from typing import Callable

import torch

from ._checks import check_common
from .record import InversionRecord


@torch.inference_mode()
def encoder(encode: Callable, decode: Callable, x: torch.Tensor, *, dtype=None) -> tuple[torch.Tensor, InversionRecord]:
    """z = E(x), with E the posterior mean; ``decode`` is unused (same signature as the others)."""
    check_common(0, None, dtype)
    t0 = time.perf_counter()
    z = encode(x.to(dtype or x.dtype))
    empty = torch.empty(0, len(x))
    record = InversionRecord("encoder", torch.zeros(len(x), dtype=torch.long), empty, empty.clone(),
                             time.perf_counter() - t0)
    return z.to(x.dtype), record
