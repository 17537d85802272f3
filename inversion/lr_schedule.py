"""Learning-rate schedules of the decoder-inversion optimisers (multipliers of the peak rate)."""

from __future__ import annotations

import math


def cosine_warmup(k: int, steps: int, warmup: float = 0.1, hold: float = 1.0, final: float = 0.0) -> float:
    """Linear warm-up over the first ``warmup`` fraction of steps, then a cosine from 1 down to
    ``final``, reached at the ``hold`` fraction of the steps and kept from there on."""
    n_warm = max(1, round(warmup * steps))
    n_hold = max(n_warm + 1, round(hold * steps))
    if k < n_warm:
        return (k + 1) / n_warm
    progress = min(1.0, (k - n_warm) / max(1, n_hold - n_warm))
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
