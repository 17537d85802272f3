"""Watermark keys: a Tree-Ring pattern in the centred Fourier transform of one latent channel.

A key file is JSON holding the secret seed from which the pattern is rebuilt; it is written
atomically with owner-only permissions and never overwrites a file unless asked to.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

FORMAT = "ringmark-key"
VERSION = 1
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
        """Disk of ``radius`` around the zero frequency of the centred (fftshift) spectrum."""
        return circle_mask(self.latent_shape[1:], self.radius)

    def pattern_values(self) -> torch.Tensor:
        """The key's complex values on the centred spectrum (zero outside the mask)."""
        return make_pattern(self.pattern, self.latent_shape[1:], self.radius, self.seed)


def default_radius(latent_side: int) -> int:
    """Tree-Ring's radius 10 on SD's 64x64 latents, as the same fraction of the latent side."""
    return max(1, round(10 * latent_side / 64))


def circle_mask(hw: tuple[int, int], radius: int) -> torch.Tensor:
    h, w = hw
    y = torch.arange(h)[:, None] - h // 2
    x = torch.arange(w)[None, :] - w // 2
    return (x**2 + y**2) <= radius**2


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
    """Hermitian-consistent key values, scaled like the orthonormal FFT of N(0, I) noise.

    Tree-Ring writes one complex constant per ring and keeps ``.real`` of the inverse
    transform, losing the imaginary part; here the values are Hermitian from the start, so
    the watermarked latent is exactly real and re-transforms to exactly these values:
    ``ring`` puts one real N(0, 1) value on each ring (a constant on a conjugate-symmetric
    ring must be real), ``rand`` a complex N(0, 1) per independent bin, ``zeros`` zeros.
    """
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    mask = circle_mask(hw, radius)
    rng = np.random.default_rng(seed)
    values = torch.zeros(hw, dtype=torch.complex128)
    if pattern == "ring":
        h, w = hw
        dist2 = (torch.arange(h)[:, None] - h // 2) ** 2 + (torch.arange(w)[None, :] - w // 2) ** 2
        ring_values = torch.from_numpy(rng.standard_normal(radius + 1))
        # bin f belongs to the smallest ring i with |f| <= i, as Tree-Ring's nested disks
        ring = torch.ceil(dist2.double().sqrt() - 1e-9).long().clamp(max=radius)
        values[mask] = ring_values[ring[mask]].to(torch.complex128)
    elif pattern == "rand":
        first, self_conj = independent_mask(mask)
        n = int(first.sum())
        z = torch.from_numpy(rng.standard_normal(n) + 1j * rng.standard_normal(n)) / np.sqrt(2)
        values[first] = z
        cy, cx = conjugate_index(hw)
        partner_vals = values[cy][:, cx].conj()  # F(-f) = conj F(f)
        values[mask & ~first & ~self_conj] = partner_vals[mask & ~first & ~self_conj]
        values[self_conj] = torch.from_numpy(rng.standard_normal(int(self_conj.sum()))).to(torch.complex128)
    return values


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
    if not 1 <= key.radius < min(h, w) // 2:
        raise KeyFileError(f"radius must be in [1, {min(h, w) // 2}) for a {h}x{w} latent, got {key.radius}")
    if not 0 <= key.seed < 2**256:
        raise KeyFileError("seed must be a non-negative integer below 2**256")


def save_key(key: Key, path: str | os.PathLike, force: bool = False) -> None:
    """Write atomically, mode 0600; an existing file is replaced only with ``force``."""
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path}: is a directory")
    if path.exists() and not force:
        raise KeyFileError(f"{path}: exists; use --force to overwrite it")
    doc = {"format": FORMAT, **key._fields(), "key_id": key.key_id}
    fd, tmp = tempfile.mkstemp(prefix=".ringmark-key-", dir=path.parent or ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the path appeared meanwhile: no silent overwrite
            os.unlink(tmp)
    except FileExistsError:
        os.unlink(tmp)
        raise KeyFileError(f"{path}: exists; use --force to overwrite it") from None
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise KeyFileError(f"{path}: cannot write key ({e.strerror})") from None


FIELDS = {"format": str, "version": int, "pattern": str, "radius": int, "channel": int, "seed": int, "model": str,
          "latent_shape": list, "key_id": str}


def load_key(path: str | os.PathLike) -> Key:
    """Read and validate a key file; a tampered, foreign or malformed file is refused."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(f"{path}: cannot read key ({getattr(e, 'strerror', None) or e})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise KeyFileError(f"{path}: not a key file (not JSON)") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise KeyFileError(f"{path}: not a ringmark key file")
    if doc.get("version") != VERSION:
        raise KeyFileError(f"{path}: key format version {doc.get('version')!r} is not supported (expected {VERSION})")
    if set(doc) != set(FIELDS):
        extra, missing = sorted(set(doc) - set(FIELDS)), sorted(set(FIELDS) - set(doc))
        raise KeyFileError(f"{path}: bad key fields (unexpected {extra}, missing {missing})")
    for name, kind in FIELDS.items():
        if not isinstance(doc[name], kind) or isinstance(doc[name], bool):
            raise KeyFileError(f"{path}: field {name!r} must be {kind.__name__}")
    shape = doc["latent_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape):
        raise KeyFileError(f"{path}: field 'latent_shape' must be three positive integers")
    key = Key(doc["pattern"], doc["radius"], doc["channel"], doc["seed"], doc["model"], tuple(shape), doc["version"])
    try:
        validate(key)
    except KeyFileError as e:
        raise KeyFileError(f"{path}: {e}") from None
    if key.key_id != doc["key_id"]:
        raise KeyFileError(f"{path}: key_id does not match the key's contents (file altered?)")
    return key
