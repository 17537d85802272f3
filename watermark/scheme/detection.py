"""The detection statistic (Tree-Ring's distance, and a calibrated p-value for the key's direction),
and matching recovered noise against several keys."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .embedding import centred_spectrum
from .keys import Key, independent_mask, key_mask


@dataclass(frozen=True)
class Score:
    p_value: float
    distance: float  # Tree-Ring's mean |F - K| inside the mask
    sigma: float  # the noise scale estimated inside the mask
    statistic: float  # Student t (ring, rand) or F (zeros)
    df: int  # degrees of freedom of the noise-scale estimate


def _dof(values: torch.Tensor, first: torch.Tensor, self_conj: torch.Tensor) -> torch.Tensor:
    """The independent real degrees of freedom of a Hermitian spectrum, each with variance
    sigma^2 under white noise of per-bin variance sigma^2: sqrt(2) Re and sqrt(2) Im of one bin
    per conjugate pair, and the real part of each self-conjugate bin."""
    pairs = values[..., first]
    return torch.cat([2**0.5 * pairs.real, 2**0.5 * pairs.imag, values[..., self_conj].real], dim=-1)


def score(z_T: torch.Tensor, key: Key) -> list[Score]:
    """Test each recovered z_T (B, C, H, W) against ``key``; small p = evidence of the key.

    ``ring`` and ``rand``: the d independent real degrees of freedom z of the mask (one bin of
    each conjugate pair, Re and Im) are split along the key k: a = <z, k/|k|>, and the d - 1
    directions orthogonal to it, whose mean square s^2 estimates the noise scale. Without the
    watermark, z does not depend on the key, and if z is white inside the mask (any scale),
    t = a / s follows Student's t with d - 1 degrees of freedom: p = P(T >= t). With the
    watermark, a ~ |k| while the orthogonal part stays noise.

    Tree-Ring's non-central chi^2 on |k - z|^2 / sigma^2 needs sigma from elsewhere in the
    spectrum, and recovered z_T is not white there; estimating the scale inside the mask keeps
    only the term |k - z|^2 carries the key in, and lets the scale cancel. The false-positive
    rates that led here are in README.md ("The test and its p-value");
    ``tests/test_calibration*.py`` check them.

    ``zeros`` has no direction: F = (mean z^2 inside the mask) / (mean z^2 on the annulus
    radius < |f| <= 2 radius), p = P(F(d, m) <= F). It assumes the spectrum is flat across
    the two regions, which recovered z_T is not: it is not calibrated (README).
    """
    mask = key.mask()
    first, self_conj = independent_mask(mask)
    spectrum = centred_spectrum(z_T[:, key.channel].float())
    keyvals = key.pattern_values()
    z = _dof(spectrum, first, self_conj)
    distance = (spectrum[:, mask] - keyvals[mask]).abs().mean(-1)
    d = z.shape[-1]
    if key.pattern == "zeros":
        annulus = key_mask(mask.shape, 2 * key.radius) & ~mask  # off the axes, as the mask
        ref = _dof(spectrum, *independent_mask(annulus))
        m = ref.shape[-1]
        sigma = ref.pow(2).mean(-1).sqrt()
        stat = z.pow(2).mean(-1) / sigma.pow(2).clamp_min(1e-24)
        p = stats.f.cdf(stat.numpy(), d, m)
    else:
        k = _dof(keyvals, first, self_conj)
        k_hat = k / k.norm()
        a = z @ k_hat
        m = d - 1
        sigma = ((z - a[:, None] * k_hat).pow(2).sum(-1) / m).sqrt()
        stat = a / sigma.clamp_min(1e-12)
        p = stats.t.sf(stat.numpy(), m)
    return [Score(float(np.clip(p[b], 0.0, 1.0)), float(distance[b]), float(sigma[b]), float(stat[b]), m)
            for b in range(len(z_T))]


def sidak(p: float, m: int) -> float:
    """Šidák correction of the smallest of m independent p-values: 1 - (1 - p)^m."""
    return float(-np.expm1(m * np.log1p(-p))) if p < 1 else 1.0


@dataclass(frozen=True)
class KeyMatch:
    key_id: str
    p_value: float  # corrected for the number of keys tested (Šidák)
    distance: float
    raw_p_value: float
    keys_tested: int


def match_keys(z_T: torch.Tensor, keys: list[Key]) -> list[KeyMatch]:
    """For each z_T, the best of ``keys`` with its Šidák-corrected p-value."""
    per_key = [score(z_T, key) for key in keys]
    out = []
    for b in range(len(z_T)):
        best = min(range(len(keys)), key=lambda i: (per_key[i][b].p_value, per_key[i][b].distance))
        s = per_key[best][b]
        out.append(KeyMatch(keys[best].key_id, sidak(s.p_value, len(keys)), s.distance, s.p_value, len(keys)))
    return out
