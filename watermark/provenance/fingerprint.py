"""Content fingerprints: what survives the edits a genuine image goes through and separates one
generation from another. Candidates, compared by ``docs/bench/provenance/measure.py``:

- ``latent``: the decoder-inverted latent z_0 (the first look's), average-pooled to ``SIDE`` x
  ``SIDE`` per channel, each channel's mean removed (a global brightness change moves it), scaled
  to unit length. A suspect image is compared by the best cosine similarity over transforms
  undone from its z_0 (``best_similarity``): the one the key search found and its other crop
  offsets (``family``; the key's Fourier magnitudes do not see a shift, so the transform that
  matched the key need not align the content).
- ``phash``: the perceptual hash of the pixels (Zauner 2010: the 8 x 8 lowest frequencies of the
  DCT of a 32 x 32 grey image, each above or below their median), written here with scipy's DCT
  (64 bits; similarity 1 - 2 x Hamming / 64, so that both candidates live on [-1, 1]).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.fft import dctn

from ..scheme.geometry import Transform, undo_each

SIDE = 8
LATENT_KIND = f"latent{SIDE}"  # what the generation log records with a latent fingerprint


def latent(z_0: torch.Tensor, transforms: list[Transform] | None = None) -> np.ndarray:
    """(B, C, h, w) latents -> (B, C * SIDE * SIDE) unit vectors (float32); ``transforms[b]``
    undone from latent b first (the one the key search found), when given."""
    z = z_0.float()
    if transforms is not None:
        z = undo_each(z, transforms)
    return pooled(z).numpy()


def pooled(z_0: torch.Tensor) -> torch.Tensor:
    """``latent`` as a tensor, without the transforms (differentiable: the adaptive forger of
    ``bench.forgery`` descends on it): (B, C, h, w) -> (B, C * SIDE * SIDE)."""
    f = F.adaptive_avg_pool2d(z_0.float(), SIDE)
    f = (f - f.mean(dim=(2, 3), keepdim=True)).flatten(1)
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def best_similarity(z_0: torch.Tensor, logged: np.ndarray, transforms: list[Transform]) -> np.ndarray:
    """For one suspect latent z_0 (C, h, w): its best similarity to each logged fingerprint
    (m, d) over ``transforms`` undone from it -> (m,)."""
    prints = latent(z_0[None].expand(len(transforms), *z_0.shape), transforms)  # (T, d)
    return (prints @ np.asarray(logged, np.float32).T).max(0)


def family(found: Transform, transforms: list[Transform]) -> list[Transform]:
    """The transforms that differ from ``found`` only in where a crop sits: the key's Fourier
    magnitudes do not see a shift, so the search cannot tell them apart, but the content can."""
    def stem(t: Transform) -> str:  # "crop xy 0.75 +0 -0.125" -> "crop xy 0.75", mirrored too
        mirror, name = ("mirror + ", t.name[9:]) if t.name.startswith("mirror + ") else ("", t.name)
        parts = name.split()
        return mirror + (" ".join(parts[:3]) if parts[0] == "crop" else name)

    return [t for t in transforms if stem(t) == stem(found)] or [found]


def phash(image: Image.Image) -> np.ndarray:
    """The 64-bit perceptual hash of ``image`` as +-1 values (float32), scaled to unit length."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = dctn(grey, norm="ortho")[:8, :8].ravel()
    return (np.where(low > np.median(low), 1.0, -1.0) / 8.0).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of unit fingerprints: a (d,) or (n, d) against b (m, d) -> (m,) or (n, m)."""
    return np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
