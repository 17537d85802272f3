"""Watermark keys: a pattern in the centred Fourier transform of one or more latent channels.

A key is its secret seed plus the geometry the pattern is rebuilt from (pattern, radius,
channels, latent shape); key files and keyrings are ``watermark.io``'s business.

Patterns (``make_pattern``): ``rand``, Hermitian-symmetric complex Gaussian values on every bin
of the mask (the default, on every channel: the most degrees of freedom, so the most distinct
keys); ``ring``, Tree-Ring's one real Gaussian value per ring (rotation-invariant, few
values); ``ringid``, RingID's discretised rings (+-1 per ring); ``zeros``.
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
VERSION = 3  # 3: several channels; 2: centred spatial origin, no axis bins, key energy fixed
VERSIONS = (2, 3)  # readable; a version-2 key is a version-3 key on one channel
from ..choices import DEFAULT_PATTERN, PATTERNS  # noqa: E402 (torch-free, for the command line)

Pattern = Literal["rand", "ring", "ringid", "zeros"]


class KeyFileError(Exception):
    """A key cannot be made, read or written (one-line message)."""


@dataclass(frozen=True)
class Key:
    pattern: str
    radius: int
    channels: tuple[int, ...]
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
        d["channels"] = list(self.channels)
        if self.version == 2:  # its file and its key_id name one channel
            d["channel"] = d.pop("channels")[0]
        return d

    def __repr__(self) -> str:  # never show the seed
        return (f"Key(id={self.key_id}, pattern={self.pattern!r}, radius={self.radius}, "
                f"channels={list(self.channels)}, model={self.model!r}, latent_shape={self.latent_shape})")

    __str__ = __repr__

    def mask(self) -> torch.Tensor:
        """(C, H, W): the bins the key is written to and tested on (``key_mask`` on its channels)."""
        c, h, w = self.latent_shape
        on = torch.tensor([ch in self.channels for ch in range(c)])[:, None, None]
        return on & key_mask((h, w), self.radius)

    def pattern_values(self) -> torch.Tensor:
        """(C, H, W): the key's complex values on the centred spectrum (zero outside the mask)."""
        c, h, w = self.latent_shape
        values = torch.zeros(self.latent_shape, dtype=torch.complex128)
        rng = np.random.default_rng(self.seed)  # one stream, channel after channel
        for ch in self.channels:
            values[ch] = make_pattern(self.pattern, (h, w), self.radius, rng)
        mask = self.mask()
        if self.pattern != "zeros":  # mean |F|^2 over the whole mask 1, as the noise it replaces
            values = values * (mask.sum() / values.abs().pow(2).sum()).sqrt()
        return values


def default_radius(latent_side: int, pattern: str = "ring") -> int:
    """Tree-Ring's radius 10 on SD's 64x64 latents for its ``ring`` and ``zeros``; 14 for ``rand``
    and ``ringid``, which gain from the room (the pattern comparison of ``ringmark bench detect``): as the same
    fraction of the latent side."""
    return max(2, round((10 if pattern in ("ring", "zeros") else 14) * latent_side / 64))


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
    with a mean that is not zero: a key there has too many false positives (docs/concepts/test.md).
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


def make_pattern(pattern: str, hw: tuple[int, int], radius: int, rng: np.random.Generator) -> torch.Tensor:
    """Hermitian-consistent key values on ``key_mask`` of one channel, drawn from ``rng``.

    Tree-Ring writes one complex constant per ring and keeps ``.real`` of the inverse
    transform, losing the imaginary part; here the values are Hermitian from the start, so
    the watermarked latent is exactly real and re-transforms to exactly these values:
    ``ring`` puts one real value on each ring (a constant on a conjugate-symmetric ring must
    be real), drawn N(0, 1) as in Tree-Ring; ``ringid`` one of +-1 per ring, RingID's
    discretised rings (Ci et al., ECCV 2024), which keeps every ring strong; ``rand`` a complex
    N(0, 1) value on each bin (its partner gets the conjugate); ``zeros`` zeros. ``Key`` then
    scales the values so that their mean |F|^2 over the mask is 1, that of the orthonormal FFT
    of N(0, I) noise: every key is as strong as any other (with raw N(0, 1) ring values, a
    key whose outer rings drew small values was several times weaker than the median).
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    mask = key_mask(hw, radius)
    values = torch.zeros(hw, dtype=torch.complex128)
    if pattern == "zeros":
        return values
    if pattern in ("ring", "ringid"):
        fy, fx = _frequencies(hw)
        draw = rng.standard_normal(radius + 1) if pattern == "ring" else rng.choice([-1.0, 1.0], radius + 1)
        ring_values = torch.from_numpy(draw)
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
    return values


def new_key(model: str, latent_shape: tuple[int, int, int], pattern: Pattern = DEFAULT_PATTERN,
            radius: int | None = None, channels: tuple[int, ...] | None = None, seed: int | None = None) -> Key:
    """A fresh key on ``channels`` (default: all); ``seed`` is drawn from ``secrets`` (128 bits)
    when not given."""
    c, h, w = latent_shape
    radius = default_radius(min(h, w), pattern) if radius is None else radius
    channels = tuple(range(c)) if channels is None else tuple(sorted(channels))
    key = Key(pattern=pattern, radius=radius, channels=channels, seed=secrets.randbits(128) if seed is None else seed,
              model=model, latent_shape=tuple(latent_shape))
    validate(key)
    return key


def validate(key: Key) -> None:
    c, h, w = key.latent_shape
    if key.pattern not in PATTERNS:
        raise KeyFileError(f"pattern must be one of {PATTERNS}, got {key.pattern!r}")
    if key.version not in VERSIONS:
        raise KeyFileError(f"key format version {key.version!r} is not supported (expected one of {VERSIONS})")
    channels = list(key.channels)
    if not channels or channels != sorted(set(channels)) or not all(0 <= ch < c for ch in channels):
        raise KeyFileError(f"channels must be distinct, ascending and in [0, {c}), got {channels}")
    if key.version == 2 and len(channels) != 1:
        raise KeyFileError("a version-2 key has one channel")
    if not 2 <= key.radius < min(h, w) // 2:  # radius 1 holds only axis bins
        raise KeyFileError(f"radius must be in [2, {min(h, w) // 2}) for a {h}x{w} latent, got {key.radius}")
    if not 0 <= key.seed < 2**256:
        raise KeyFileError("seed must be a non-negative integer below 2**256")
