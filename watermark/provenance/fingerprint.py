"""Content fingerprints: what survives the edits a genuine image goes through and separates one
generation from another. Candidates, compared by ``docs/bench/provenance/measure.py``:

- ``latent``: the decoder-inverted latent z_0 (the first look's), average-pooled to ``SIDE`` x
  ``SIDE`` per channel, each channel's mean removed (a global brightness change moves it), scaled
  to unit length. A suspect image is compared by the best cosine similarity over transforms
  undone from its z_0 (``best_similarity``): the one the key search found and its other crop
  offsets (``family``; the key's Fourier magnitudes do not see a shift, so the transform that
  matched the key need not align the content).
- ``pixels``: the image itself, average-pooled to ``PIXEL_SIDE`` x ``PIXEL_SIDE`` per colour channel
  (a thumbnail, 1.5 KB as float16). Compared by ``pixel_similarity``: one minus the relative
  residual of the suspect's thumbnail u (the transform undone; on the cells it covers and has not
  clipped; its luminance, the mean removed) against the logged one s, over contrast gains in
  ``GAIN`` (``residual``). Linear in the pixels, so a perturbation of RMS e (over the three
  channels) moves u's luminance by at most 1.16 e (a cell's mean is never further than its
  pixels; 1.16 = |LUMA| sqrt 3): a forger who keeps close to another cover cannot make its
  thumbnail the logged generation's, however well it knows the model
  (``bench.forgery.thumbnail_forgery`` is that forger at its best).
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
PIXEL_SIDE = 16
PIXEL_KIND = f"pixels{PIXEL_SIDE}"  # ... with a thumbnail (``pixels``)
GAIN = (0.5, 8.0)  # the contrast gains a genuine image's thumbnail may have gone through
COVERED = 0.99  # a thumbnail cell is compared where the undone image covers this share of it
CLIP_LEVEL, CLIPPED = 0.99, 0.5  # ... and (one of three masks) at most this share of its pixels sits at the ends of the range
SOLID, BLOCKED = 3, 0.1  # ... and (another) at most this share lies in solid clipped squares of this side (``solid``)
MIN_CELLS = 0.25  # fewer cells compared than this share: no match
NUDGE = 1 / 64  # of the side: how far ``nudged`` moves a transform
LUMA = torch.tensor([0.299, 0.587, 0.114])
UNDONE_SIDE = 4 * PIXEL_SIDE  # the transforms are undone on the image pooled to this side
MIN_SIMILARITY = 0.8  # the content test asks at least this much (a flat cover, unlike every pool member, is not enough)


def latent(z_0: torch.Tensor, transforms: list[Transform] | None = None) -> np.ndarray:
    """(B, C, h, w) latents -> (B, C * SIDE * SIDE) unit vectors (float32); ``transforms[b]``
    undone from latent b first (the one the key search found), when given."""
    z = z_0.float()
    if transforms is not None:
        z = undo_each(z, transforms)
    f = F.adaptive_avg_pool2d(z, SIDE)
    f = (f - f.mean(dim=(2, 3), keepdim=True)).flatten(1)
    return (f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()


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


def pixels(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) images in [-1, 1] -> (B, 3 * PIXEL_SIDE**2) thumbnails (float32;
    differentiable: the adaptive forger of ``bench.forgery`` descends on it)."""
    return F.adaptive_avg_pool2d(x.float(), PIXEL_SIDE).flatten(1)


def pixel_similarity(x: torch.Tensor, logged: np.ndarray, transforms: list[Transform]) -> np.ndarray:
    """For one suspect image x (3, H, W) in [-1, 1]: 1 - its smallest relative residual against
    each logged thumbnail (m, 3 * PIXEL_SIDE**2) over ``transforms`` undone from it, each nudged
    (``nudged``) -> (m,) (``residual``). Per transform, only the cells the undone image covers are
    compared (a crop or rotation leaves the rest empty), on the luminance (``luma``), its mean
    removed on them from both (a brightness shift); each transform also without the cells the
    suspect has clipped (a brightened image's white) and without those and the cells under a solid
    clipped patch (an occlusion: ``solid``), the best of the three kept; -inf where fewer than
    ``MIN_CELLS`` of the cells are left. The transforms are undone on the image pooled to
    ``UNDONE_SIDE`` (a quarter of the cost on 128 px)."""
    side = PIXEL_SIDE
    x = x.float()
    clipped = (x.abs() >= CLIP_LEVEL).any(0, keepdim=True).float()  # (1, H, W)
    small = F.adaptive_avg_pool2d(torch.cat([x, torch.ones_like(clipped), clipped]), UNDONE_SIDE)
    small = torch.cat([small, solid(small[4:5])])
    moves = nudged(transforms)
    cells = F.adaptive_avg_pool2d(undo_each(small[None].expand(len(moves), -1, -1, -1), moves), side).flatten(2)
    u, covered, clip, block = luma(cells[:, :3]), cells[:, 3:4], cells[:, 4:5], cells[:, 5:6]  # (T, 1, P) each
    # three masks per transform, the best kept: the cells covered; of those, not clipped; of those,
    # not under a solid patch (a contrast change clips cells that still match, a brightening's do
    # not; a blown-out sky's cells match, an occlusion's do not)
    kept = covered >= COVERED
    unclipped = kept & (clip <= CLIPPED * covered)
    w = torch.cat([kept, unclipped, unclipped & (block <= BLOCKED * covered)]).float()  # (3T, 1, P)
    u = u.repeat(3, 1, 1)
    n = w.sum(-1, keepdim=True).clamp_min(1)
    u = (u - (u * w).sum(-1, keepdim=True) / n) * w  # zero-mean on the cells
    s = luma(torch.from_numpy(np.asarray(logged, np.float32)).view(len(logged), 3, -1))  # (m, 1, P)
    dot = torch.einsum("tcp,mcp->tm", u, s)  # = <u, s - its mean>: u is zero-mean on the cells
    s_sum = torch.einsum("tkp,mcp->tmc", w, s)
    ss = torch.einsum("tkp,mcp->tm", w, s * s) - (s_sum**2 / n[:, None, :, 0]).sum(-1)  # ||s - its mean||^2
    sim = 1 - residual(dot, (u * u).sum((1, 2))[:, None].expand_as(dot), ss)
    sim[w.sum((1, 2)) < MIN_CELLS * side * side] = -torch.inf
    return sim.max(0).values.numpy()


def solid(clipped: torch.Tensor) -> torch.Tensor:
    """(1, S, S) shares of clipped pixels -> (1, S, S): 1 where a ``SOLID`` x ``SOLID`` square of
    wholly clipped pixels covers the pixel (a morphological opening), or lies next to one and is
    partly clipped itself (the patch's rim, cut by the pooling), else 0. A patch pasted over
    the image (black, white) or a blown-out region is solid; the clipped pixels that noise or a
    contrast change scatter are not, and its cells stay in the comparison."""
    full = (clipped >= 1 - 1e-6).float()[None]
    eroded = -F.max_pool2d(-full, SOLID, 1, SOLID // 2)  # hand-written: torch has no grey-level opening
    opened = F.max_pool2d(eroded, SOLID, 1, SOLID // 2)
    edge = F.max_pool2d(opened, 3, 1, 1) * (clipped[None] > 0)  # the patch's partly clipped rim
    return torch.maximum(opened, edge)[0]


def luma(rgb: torch.Tensor) -> torch.Tensor:
    """(..., 3, P) -> (..., 1, P): the luminance (ITU-R BT.601's weights, ``LUMA``). Thumbnails are
    compared on it: a JPEG's chroma subsampling and quantisation move the colour of a
    low-saturation image's cells by a third of their spread, its luminance by a twentieth."""
    return torch.einsum("c,...cp->...p", LUMA, rgb).unsqueeze(-2)


def nudged(transforms: list[Transform]) -> list[Transform]:
    """Each transform and its neighbours a thumbnail tells apart: shifted by ``NUDGE`` of the side
    either way in x and y (the search's crop offsets are twice that apart, so a crop between two
    of them is left a quarter of a cell out at most), and crops scaled by ``1 +- NUDGE`` too (its
    crop scales are 0.05 apart)."""
    out = []
    for t in transforms:
        (a, b, c), (d, e, f) = t.matrix
        for k in (1 - NUDGE, 1.0, 1 + NUDGE) if "crop" in t.name else (1.0,):
            for dx in (-2 * NUDGE, 0.0, 2 * NUDGE):  # normalised coordinates span 2
                for dy in (-2 * NUDGE, 0.0, 2 * NUDGE):
                    out.append(Transform(t.name, ((a * k, b * k, c + dx), (d * k, e * k, f + dy))))
    return out


def residual(dot: torch.Tensor, uu: torch.Tensor, ss: torch.Tensor) -> torch.Tensor:
    """The smallest relative distance between a suspect's thumbnail u and a logged one s (both
    mean-free; given by <u, s>, ||u||^2, ||s||^2) over contrast gains g in ``GAIN``: ``||u - g
    s|| / ||s||`` for g <= 1 (a fainter copy), ``||u / g - s|| / ||s||`` for g >= 1 (a stronger
    one, measured at the suspect's scale brought back). In closed form on each side of 1."""
    ss = ss.clamp_min(1e-12)
    g = (dot / ss).clamp(GAIN[0], 1.0)
    fainter = uu - 2 * g * dot + g * g * ss
    h = (dot / uu.clamp_min(1e-12)).clamp(1 / GAIN[1], 1.0)  # 1 / g
    stronger = h * h * uu - 2 * h * dot + ss
    return (torch.minimum(fainter, stronger).clamp_min(0) / ss).sqrt()


def phash(image: Image.Image) -> np.ndarray:
    """The 64-bit perceptual hash of ``image`` as +-1 values (float32), scaled to unit length."""
    grey = np.asarray(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS), np.float64)
    low = dctn(grey, norm="ortho")[:8, :8].ravel()
    return (np.where(low > np.median(low), 1.0, -1.0) / 8.0).astype(np.float32)
