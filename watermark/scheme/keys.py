"""Watermark keys: a Tree-Ring pattern in the centred Fourier transform of one latent channel.

A key is its secret seed plus the geometry the pattern is rebuilt from (pattern, radius,
channel, latent shape); key files are ``watermark.io.keyfile``'s business.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch

FORMAT = "ringmark-key"
VERSION = 2  # 2: centred spatial origin, the frequency axes left out of the mask, key energy fixed
PATTERNS = ("ring", "rand", "zeros")
Pattern = Literal["ring", "rand", "zeros"]


class KeyFileError(Exception):
    """A key cannot be made, read or written (one-line message)."""


@dataclass(frozen=True)
class Key:
    pattern: str
    radius: int
    channel: int
    seed: int  # secret: the pattern's values follow from it
    model: str
    latent_shape: tuple[int, int, int]
    version: int = VERSION

    @property
    def key_id(self) -> str:
        """Short public id: a hash of the whole key, seed included (it reveals nothing of the seed)."""
        payload = json.dumps(self._fields(), sort_keys=True).encode()
        return hashlib.sha256(b"ringmark-key-id\0" + payload).hexdigest()[:16]

    def _fields(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        return d

    def __repr__(self) -> str:  # never show the seed
        return (f"Key(id={self.key_id}, pattern={self.pattern!r}, radius={self.radius}, channel={self.channel}, "
                f"model={self.model!r}, latent_shape={self.latent_shape})")

    __str__ = __repr__

    def mask(self) -> torch.Tensor:
        """The bins the key is written to and tested on (see ``key_mask``)."""
        return key_mask(self.latent_shape[1:], self.radius)

    def pattern_values(self) -> torch.Tensor:
        """The key's complex values on the centred spectrum (zero outside the mask)."""
        return make_pattern(self.pattern, self.latent_shape[1:], self.radius, self.seed)


def default_radius(latent_side: int) -> int:
    """Tree-Ring's radius 10 on SD's 64x64 latents, as the same fraction of the latent side."""
    return max(2, round(10 * latent_side / 64))


def _frequencies(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer frequencies (fy, fx) of each bin of the centred spectrum."""
    h, w = hw
    return torch.arange(h)[:, None] - h // 2, torch.arange(w)[None, :] - w // 2


def circle_mask(hw: tuple[int, int], radius: int) -> torch.Tensor:
    fy, fx = _frequencies(hw)
    return (fx**2 + fy**2) <= radius**2


def key_mask(hw: tuple[int, int], radius: int) -> torch.Tensor:
    """Tree-Ring's disk of ``radius`` around the zero frequency, less the two frequency axes.

    The networks' zero padding leaves their border artefacts on the axes fx = 0 and fy = 0,
    with a mean that is not zero: a key there has too many false positives (README.md, "The
    test and its p-value").
    """
    fy, fx = _frequencies(hw)
    return circle_mask(hw, radius) & (fx != 0) & (fy != 0)


def conjugate_index(hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred index of -f for each centred index f (the Hermitian partner)."""
    h, w = hw
    iy = (-(torch.arange(h) - h // 2)) % h
    ix = (-(torch.arange(w) - w // 2)) % w
    # back to centred indices: frequency fy sits at fy + h//2 (mod h)
    return (iy + h // 2) % h, (ix + w // 2) % w


def independent_mask(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``mask`` into (one bin of each conjugate pair, self-conjugate bins).

    The spectrum of a real signal is Hermitian, F(-f) = conj F(f): only these bins carry
    independent values, and a self-conjugate bin is real.
    """
    h, w = mask.shape
    cy, cx = conjugate_index((h, w))
    flat = torch.arange(h * w).view(h, w)
    partner = flat[cy][:, cx]
    self_conj = mask & (partner == flat)
    first = mask & (flat < partner)
    return first, self_conj


def make_pattern(pattern: str, hw: tuple[int, int], radius: int, seed: int) -> torch.Tensor:
    """Hermitian-consistent key values on ``key_mask``, with the energy of the noise they replace.

    Tree-Ring writes one complex constant per ring and keeps ``.real`` of the inverse
    transform, losing the imaginary part; here the values are Hermitian from the start, so
    the watermarked latent is exactly real and re-transforms to exactly these values:
    ``ring`` puts one real value on each ring (a constant on a conjugate-symmetric ring must
    be real), drawn N(0, 1) as in Tree-Ring; ``rand`` a complex N(0, 1) value on each bin
    (its partner gets the conjugate); ``zeros`` zeros. ``ring`` and ``rand`` values are then
    scaled so that their mean |F|^2 over the mask is 1, that of the orthonormal FFT of
    N(0, I) noise: every key is as strong as any other (with raw N(0, 1) ring values, a
    key whose outer rings drew small values was several times weaker than the median).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    mask = key_mask(hw, radius)
    rng = np.random.default_rng(seed)
    values = torch.zeros(hw, dtype=torch.complex128)
    if pattern == "zeros":
        return values
    if pattern == "ring":
        fy, fx = _frequencies(hw)
        ring_values = torch.from_numpy(rng.standard_normal(radius + 1))
        # bin f belongs to the smallest ring i with |f| <= i, as Tree-Ring's nested disks
        ring = torch.ceil((fx**2 + fy**2).double().sqrt() - 1e-9).long().clamp(max=radius)
        values[mask] = ring_values[ring[mask]].to(torch.complex128)
    else:
        first, _ = independent_mask(mask)  # the mask has no self-conjugate bin: those lie on the axes
        n = int(first.sum())
        values[first] = torch.from_numpy(rng.standard_normal(n) + 1j * rng.standard_normal(n))
        cy, cx = conjugate_index(hw)
        partners = mask & ~first
        values[partners] = values[cy][:, cx].conj()[partners]  # F(-f) = conj F(f)
    return values * (mask.sum() / values.abs().pow(2).sum()).sqrt()


def new_key(model: str, latent_shape: tuple[int, int, int], pattern: Pattern = "ring", radius: int | None = None,
            channel: int | None = None, seed: int | None = None) -> Key:
    """A fresh key; ``seed`` is drawn from ``secrets`` (128 bits) when not given."""
    c, h, w = latent_shape
    radius = default_radius(min(h, w)) if radius is None else radius
    channel = c - 1 if channel is None else channel
    key = Key(pattern, radius, channel, secrets.randbits(128) if seed is None else seed, model,
              tuple(latent_shape))
    validate(key)
    return key


def validate(key: Key) -> None:
    c, h, w = key.latent_shape
    if key.pattern not in PATTERNS:
        raise KeyFileError(f"pattern must be one of {PATTERNS}, got {key.pattern!r}")
    if not 0 <= key.channel < c:
        raise KeyFileError(f"channel must be in [0, {c}), got {key.channel}")
    if not 2 <= key.radius < min(h, w) // 2:  # radius 1 holds only axis bins
        raise KeyFileError(f"radius must be in [2, {min(h, w) // 2}) for a {h}x{w} latent, got {key.radius}")
    if not 0 <= key.seed < 2**256:
        raise KeyFileError("seed must be a non-negative integer below 2**256")
