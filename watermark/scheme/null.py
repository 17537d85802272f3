"""The null model of recovered z_T, which the test whitens with so that its t is exact for every key.

z_T recovered from a clean image is not white noise: the recovery leaves a mean (the networks'
border artefacts), channels of unequal power and correlated with each other, and a spectrum
that is not flat. The pooled t-test (``detection``) is exact only for white noise, so on
recovered z_T its false-positive rate is right on average over keys, not for each one.

``NullModel`` holds, for one model, recovery setting and latent shape, the sums that estimate
from clean images (i) the mean recovered z_T, and (ii) on each ring ceil(|f|) = rho of the
centred spectrum, off the frequency axes as every key's mask, the cross-channel covariance
S_rho = E[(F_f - m_f)(F_f - m_f)^H] pooled over the ring's bins (radially binned: a key on any
mask and after any rotation reads the same rings). The test subtracts the mean from z_T, then
maps each bin's channel vector F_f to S_rho^{-1/2} F_f: whitened, every real degree of freedom
has unit variance and no correlation with another, so t = a / s is Student's t for any key
direction. The scale s is still estimated inside the mask, so a global change of contrast
cancels as before.

Pooling over the whole ring makes S_rho real (the pairs f, -f add conjugate terms), which
assumes no channel is spatially shifted against another; ``tests/test_null_model.py`` checks
the whitened test on coloured noise with a known covariance, ``tests/test_calibration_model.py``
per key on recovered z_T.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .embedding import centred_spectrum
from .keys import _frequencies

FORMAT = "ringmark-null"
VERSION = 2  # 2: the recovered z_T themselves (``samples``) beside the sums


def rings(hw: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """(ring index ceil(|f|) of each bin off the frequency axes, -1 elsewhere; the largest ring a
    key can use on this shape)."""
    fy, fx = _frequencies(hw)
    rho = torch.ceil((fx**2 + fy**2).double().sqrt() - 1e-9).long()
    top = min(hw) // 2 - 1  # keys' radius < min(h, w) // 2 (``keys.validate``)
    return torch.where((fx != 0) & (fy != 0) & (rho <= top), rho, -1), top


def radial_sums(spectrum: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) centred spectra -> (B, C, rings): the sum of Re F over each ring's bins (off the
    axes), the component of each channel along a radially symmetric pattern."""
    b, c, h, w = spectrum.shape
    ring, top = rings((h, w))
    on = ring >= 0
    out = torch.zeros(b, c, top + 1, dtype=torch.float64)
    return out.index_add_(2, ring[on], spectrum[:, :, on].real.double())


@dataclass(frozen=True)
class NullModel:
    """Sums over ``n`` recovered z_T of clean images of one ``latent_shape``, and the z_T themselves
    (``samples``, for the calibrated test): ``sum_z`` (C, H, W) and, per ring, ``sum_outer`` (rings, C, C) = sum over images and the ring's bins of F F^T
    (real part; F the centred spectrum, not centred on its mean). ``meta``: what made it (model,
    recovery, images, command), which ``verify`` matches against its own settings."""

    latent_shape: tuple[int, int, int]
    n: int = 0
    sum_z: torch.Tensor | None = None
    sum_outer: torch.Tensor | None = None
    sum_radial: torch.Tensor | None = None
    samples: torch.Tensor | None = None  # (n, C, H, W) float16: the recovered z_T (``calibrated``)
    meta: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict, compare=False, repr=False)  # ``calibrated.spread``'s, per key

    def update(self, z_T: torch.Tensor) -> NullModel:
        """The model with the recovered z_T (B, C, H, W) of more clean images added."""
        if tuple(z_T.shape[1:]) != tuple(self.latent_shape):
            raise ValueError(f"z_T shape {tuple(z_T.shape[1:])} does not fit the null model's {self.latent_shape}")
        c, h, w = self.latent_shape
        ring, top = rings((h, w))
        spectrum = centred_spectrum(z_T)  # (B, C, H, W) complex128
        outer = torch.zeros(top + 1, c, c, dtype=torch.float64)
        on = ring >= 0
        x = spectrum[:, :, on]  # (B, C, bins)
        per_bin = torch.einsum("bcn,bdn->ncd", x, x.conj()).real  # (bins, C, C)
        outer.index_add_(0, ring[on], per_bin)
        v = radial_sums(spectrum).flatten(1)  # (B, C * rings)
        radial = v.T @ v
        sum_z = z_T.double().sum(0)
        add = lambda old, new: new if old is None else old + new  # noqa: E731
        samples = z_T.to(torch.float16)
        return replace(self, n=self.n + len(z_T), sum_z=add(self.sum_z, sum_z), sum_outer=add(self.sum_outer, outer),
                       sum_radial=add(self.sum_radial, radial), cache={},
                       samples=samples if self.samples is None else torch.cat([self.samples, samples]))

    def mean(self) -> torch.Tensor:
        """(C, H, W): the mean recovered z_T."""
        self._check()
        return self.sum_z / self.n

    def covariance(self) -> torch.Tensor:
        """(rings, C, C): S_rho, the real cross-channel covariance of the centred spectrum on each
        ring (rings 0 and 1 hold no bin off the axes and are left zero)."""
        self._check()
        c, h, w = self.latent_shape
        ring, top = rings((h, w))
        on = ring >= 0
        m = centred_spectrum(self.mean())[:, on]  # (C, bins): the mean's spectrum
        mean_outer = torch.zeros(top + 1, c, c, dtype=torch.float64)
        mean_outer.index_add_(0, ring[on], torch.einsum("cn,dn->ncd", m, m.conj()).real)
        bins = torch.bincount(ring[on], minlength=top + 1).double().clamp_min(1)[:, None, None]
        return (self.sum_outer / self.n - mean_outer) / bins

    def whitener(self, radius: int, channels: tuple[int, ...]) -> torch.Tensor:
        """(2r+1, 2r+1, c, c) complex64: S_rho^{-1/2} on ``channels`` for each bin of the centred
        window of ``radius`` (``embedding.centred_window``); the identity off the rings."""
        c, h, w = self.latent_shape
        ring, top = rings((h, w))
        if radius > top:
            raise ValueError(f"radius {radius} is beyond the null model's rings (<= {top})")
        root = self._roots(channels)
        window = ring[h // 2 - radius : h // 2 + radius + 1, w // 2 - radius : w // 2 + radius + 1]
        out = torch.eye(len(channels), dtype=torch.float64).repeat(*window.shape, 1, 1)
        inside = window >= 0
        out[inside] = root[window[inside]]
        return out.to(torch.complex64)

    def radial_whitener(self, radius: int, channels: tuple[int, ...]) -> torch.Tensor:
        """(c (radius - 1), c (radius - 1)): M = C_u^{-1/2}, C_u the covariance of the radially
        symmetric components u of the spectrum once whitened bin by bin, on ``channels`` and the
        rings 2..radius (channel-major). ``radial_basis`` says how the test applies it."""
        c, h, w = self.latent_shape
        _, top = rings((h, w))
        ch = list(channels)
        root = self._roots(channels)  # the test's own S_rho^{-1/2} on the key's channels
        v_mean = radial_sums(centred_spectrum(self.mean())[None])[0]  # (C, rings)
        cov = (self.sum_radial / self.n - torch.outer(v_mean.flatten(), v_mean.flatten())).view(c, top + 1, c, top + 1)
        cov = cov[ch][:, :, ch]
        # whiten each ring's channel vector as the test whitens the bins, then scale to unit
        # variance under white noise
        cov = torch.einsum("rcd,dres,set->crts", root, cov, root)
        ring, _ = rings((h, w))
        scale = torch.bincount(ring[ring >= 0], minlength=top + 1).double().clamp_min(1).rsqrt()  # var 2P -> 1
        cov = cov * scale[None, :, None, None] * scale[None, None, None, :]
        sub = cov[:, 2 : radius + 1][:, :, :, 2 : radius + 1].reshape(len(ch) * (radius - 1), -1)
        # shrunk towards white noise's identity by as many pseudo-images as it has dimensions: a few
        # images still give a usable model; 2,048 images barely move (Ledoit-Wolf-style shrinkage)
        d = len(sub)
        sub = (self.n * sub + d * torch.eye(d, dtype=torch.float64)) / (self.n + d)
        evals, evecs = torch.linalg.eigh(sub)
        if not bool((evals > 0).all()):
            raise ValueError("the null model's radial covariance is singular: too few images")
        return evecs @ torch.diag(evals.rsqrt()) @ evecs.T

    def whiten(self, window: torch.Tensor, channels: tuple[int, ...]) -> torch.Tensor:
        """A centred window (..., c, 2r+1, 2r+1) on ``channels`` (``embedding.centred_window`` of
        z_T less ``mean()``, or a key's values), whitened bin by bin: what the test reads."""
        radius = window.shape[-1] // 2
        return torch.einsum("hwcd,...dhw->...chw", self.whitener(radius, channels).to(window.dtype), window)

    def _roots(self, channels: tuple[int, ...]) -> torch.Tensor:
        """(rings, c, c): S_rho^{-1/2} on ``channels`` from ring 2 on, the identity on rings 0 and 1."""
        ch = list(channels)
        s = self.covariance()[:, ch][:, :, ch]
        evals, evecs = torch.linalg.eigh(s[2:])
        if not bool((evals > 0).all()):
            raise ValueError("the null model's covariance is singular: too few images")
        root = torch.eye(len(ch), dtype=torch.float64).repeat(len(s), 1, 1)
        root[2:] = evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.transpose(-1, -2)
        return root

    def _check(self):
        if self.n < 2:
            raise ValueError("the null model holds fewer than 2 images")
