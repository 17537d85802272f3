"""The detection statistic: Tree-Ring's distance and a calibrated non-central chi-squared p-value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .embed import centred_spectrum
from .keys import Key, independent_mask


@dataclass(frozen=True)
class Score:
    p_value: float
    distance: float  # Tree-Ring's mean |F - K| inside the mask
    sigma: float  # estimated noise scale of the spectrum
    statistic: float
    df: int


def _dof(values: torch.Tensor, first: torch.Tensor, self_conj: torch.Tensor, imag: bool = True) -> torch.Tensor:
    """The independent real degrees of freedom of a Hermitian spectrum, each with variance
    sigma^2 under white noise of per-bin variance sigma^2: sqrt(2) Re and sqrt(2) Im of one bin
    per conjugate pair, and the real part of each self-conjugate bin. ``imag=False`` leaves
    out the imaginary parts."""
    pairs = values[..., first]
    parts = [2**0.5 * pairs.real, values[..., self_conj].real] + ([2**0.5 * pairs.imag] if imag else [])
    return torch.cat(parts, dim=-1)


def noise_scale(spectrum: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """sigma estimated from every bin of the channel outside the mask, and its degrees of freedom.

    Those bins are untouched by any key and, under white noise, independent of the mask's
    bins; with ~10^3 degrees of freedom the estimate is tight, and ``score`` accounts for
    what uncertainty is left with an F law. Under N(0, I) noise sigma = 1.
    """
    first, self_conj = independent_mask(~mask)
    dof = _dof(spectrum, first, self_conj)
    return dof.pow(2).mean(-1).sqrt(), dof.shape[-1]


def score(z_T: torch.Tensor, key: Key) -> list[Score]:
    """Test each recovered z_T (B, C, H, W) against ``key``.

    Statistic: S = sum_j (k_j - z_j)^2 / sigma^2 over the d independent degrees of freedom j
    of the mask (one bin of each conjugate pair, Re and Im; self-conjugate bins, Re). Without
    the watermark, z_j ~ N(0, sigma^2) independent of the key, so S ~ noncentral chi^2(d, nc),
    nc = sum k_j^2 / sigma^2: Tree-Ring's test, which counts every bin twice and so is not
    calibrated. sigma is estimated from m other degrees of freedom (``noise_scale``), which
    makes S / d noncentral F(d, m, nc); p = P(F <= S / d), small when z_T is close to the key.
    """
    mask = key.mask()
    first, self_conj = independent_mask(mask)
    spectrum = centred_spectrum(z_T[:, key.channel].float())
    keyvals = key.pattern_values()
    # A ring is constant on conjugate-symmetric rings, hence real: its imaginary parts are zero
    # for every ring key and say nothing about which key, so only the real parts are tested.
    imag = key.pattern != "ring"
    k = _dof(keyvals, first, self_conj, imag)
    z = _dof(spectrum, first, self_conj, imag)
    sigma, m = noise_scale(spectrum, mask)
    sigma = sigma.clamp_min(1e-12)
    distance = (spectrum[:, mask] - keyvals[mask]).abs().mean(-1)
    out = []
    for b in range(len(z_T)):
        s = float(((k - z[b]) ** 2).sum() / sigma[b] ** 2)
        nc = float((k**2).sum() / sigma[b] ** 2)
        df = k.numel()
        p = stats.f.cdf(s / df, df, m) if nc == 0 else stats.ncf.cdf(s / df, df, m, nc)
        out.append(Score(float(np.clip(p, 0.0, 1.0)), float(distance[b]), float(sigma[b]), s, df))
    return out


def sidak(p: float, m: int) -> float:
    """Šidák correction of the smallest of m independent p-values: 1 - (1 - p)^m."""
    return float(-np.expm1(m * np.log1p(-p))) if p < 1 else 1.0
