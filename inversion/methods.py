"""Decoder inversion by name: one entry point over the method files."""

from __future__ import annotations

from typing import Callable, Literal

import torch

from .adam import adam
from .anderson import anderson
from .attack_aware import attack_aware
from .encoder import encoder
from .fixed_point import fixed_point
from .gradient import gradient
from .inertial_km import inertial_km
from .record import InversionRecord

Method = Literal["encoder", "gradient", "fixed_point", "inertial_km", "adam", "anderson", "attack_aware"]
METHODS: dict[str, Callable] = {
    "encoder": encoder,
    "gradient": gradient,
    "fixed_point": fixed_point,
    "inertial_km": inertial_km,
    "adam": adam,
    "anderson": anderson,
    "attack_aware": attack_aware,
}
ITERATIVE = frozenset(METHODS) - {"encoder"}  # the methods that take iterations; the encoder runs none


def invert_decoder(
    method: Method, encode: Callable, decode: Callable, x: torch.Tensor, **kwargs
) -> tuple[torch.Tensor, InversionRecord]:
    """Find z with decode(z) ≈ x by ``method``; ``kwargs`` go to that method (iters, rho, lr, ...)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method](encode, decode, x, **kwargs)
