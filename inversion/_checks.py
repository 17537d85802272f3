"""Argument checks shared by the decoder-inversion methods."""

from __future__ import annotations

import torch

# the precisions the networks may run in, by the name users give them
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def check_common(iters: int, tol: float | None, dtype) -> None:
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 0:
        raise ValueError(f"iters must be a non-negative integer, got {iters!r}")
    if tol is not None and not tol > 0:
        raise ValueError(f"tol must be positive or None, got {tol!r}")
    if dtype is not None and dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {tuple(DTYPES.values())}, got {dtype!r}")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{name} must be positive, got {value!r}")
