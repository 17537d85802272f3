"""The geometric search: a crop-and-resize scales and shifts the latent grid, a rotation rotates
it. Before the test, candidate transforms of the recovered z_T undo them; the test keeps the
best and its p-value is corrected for the number of candidates (``detection.match_keys``).

A transform is an affine map of normalised coordinates in [-1, 1] (``torch.nn.functional.
affine_grid``'s convention): the undone latent at p is the recovered latent at A [p, 1],
bilinear, zero outside. Rotation by theta undoes an image rotated by theta about its centre
(counter-clockwise, as ``PIL.Image.rotate``); ``crop`` undoes a crop of a share ``a`` of one or
both sides at offset ``b``, resized back to full size: the image at u showed the original at
a u + b.
``mirror`` undoes a horizontal flip (the most common edit on social platforms): x -> -x maps the
latent's pixel centres onto each other, so it is exact; ``all`` searches every rotation and crop
with and without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import DEFAULT_SEARCH, SEARCHES  # noqa: E402 (torch-free, for the command line)
ROTATION_STEP = 5.0  # degrees on a 32x32 latent: half a step off, a bin at radius 7 moves 0.3 bins
CROP_SCALES = (0.9, 0.85, 0.8, 0.75, 0.7)  # share of the side kept
SHIFT_STEP = 1 / 16  # of the half-side on a 32x32 latent: one latent pixel
TUNED_SIDE = 32  # the latent side the steps above are for; default key radii grow with the side


@dataclass(frozen=True)
class Transform:
    name: str  # "identity", "rotation 75", "crop x 0.75 -0.125", "crop xy 0.8 +0.125 -0.25"
    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]


IDENTITY = Transform("identity", ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))


def rotation(degrees: float) -> Transform:
    # image rows grow downwards, so a counter-clockwise turn on screen is clockwise in (x, y)
    t = math.radians(degrees)
    return Transform(f"rotation {degrees:g}", ((math.cos(t), math.sin(t), 0.0), (-math.sin(t), math.cos(t), 0.0)))


def mirrored(t: Transform) -> Transform:
    """``t`` after a horizontal flip of the image: the undone latent at p reads the recovered one
    at A [-x, y, 1]."""
    (a, b, c), row = t.matrix
    name = "mirror" if t == IDENTITY else f"mirror + {t.name}"
    return Transform(name, ((-a, b, c), (-row[0], row[1], row[2])))


def crop(scale: float, bx: float | None, by: float | None) -> Transform:
    """Undo a crop of ``scale`` of the width (``bx`` given) and/or height (``by`` given)."""
    sx, tx = (1 / scale, -bx / scale) if bx is not None else (1.0, 0.0)
    sy, ty = (1 / scale, -by / scale) if by is not None else (1.0, 0.0)
    axes = "x" * (bx is not None) + "y" * (by is not None)
    offsets = " ".join(f"{b:+.3g}" for b in (bx, by) if b is not None)
    return Transform(f"crop {axes} {scale:g} {offsets}", ((sx, 0.0, tx), (0.0, sy, ty)))


def compose(first: Transform, then: Transform) -> Transform:
    """Undo ``first`` and then ``then`` as one transform: the undo of an edit ``then`` applied after
    ``first`` (a rotation, then a crop: ``compose(rotation(10), crop(0.85, 0, 0))``). The undone
    latent at p reads the recovered one at A_then [A_first [p, 1], 1]."""
    a, r = np.array(then.matrix), np.array(first.matrix)
    m = np.c_[a[:, :2] @ r[:, :2], a[:, :2] @ r[:, 2] + a[:, 2]]
    return Transform(f"{first.name} + {then.name}", tuple(tuple(float(v) for v in row) for row in m))


def _offsets(scale: float, step: float) -> list[float]:
    n = int(np.floor((1 - scale) / step + 1e-9))
    return [k * step for k in range(-n, n + 1)]


def search_grid(search: str = DEFAULT_SEARCH, side: int = TUNED_SIDE, rotation_step: float | None = None,
                scales: tuple[float, ...] = CROP_SCALES, shift_step: float | None = None) -> list[Transform]:
    """The candidates, identity first: ``rotation``, every ``rotation_step`` degrees round the
    circle; ``crop``, each scale on the width alone and the height alone (offsets every
    ``shift_step``) and on both (offsets every 2 ``shift_step``); ``mirror``, the identity and the
    horizontal flip; ``all``, the rotations and the crops, each also after a flip (``mirrored``).

    The steps default to the tuned ones scaled to a latent of ``side``: a key's radius grows with
    the side (``keys.default_radius``), so the same bin movement needs a finer turn, and one latent
    pixel is a smaller share of the side (a shift of a pixel turns a bin at the key's edge by the
    same phase on any side). The grid, and the correction for it, grow with the side."""
    if search not in SEARCHES:
        raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
    if side < 1:
        raise ValueError(f"side must be positive, got {side}")
    rotation_step = ROTATION_STEP * TUNED_SIDE / side if rotation_step is None else rotation_step
    shift_step = SHIFT_STEP * TUNED_SIDE / side if shift_step is None else shift_step
    grid = [IDENTITY]
    if search in ("rotation", "all"):
        grid += [rotation(d) for d in np.arange(rotation_step, 360 - 1e-9, rotation_step)]
    if search in ("crop", "all"):
        for a in scales:
            grid += [crop(a, b, None) for b in _offsets(a, shift_step)]
            grid += [crop(a, None, b) for b in _offsets(a, shift_step)]
            grid += [crop(a, bx, by) for bx in _offsets(a, 2 * shift_step) for by in _offsets(a, 2 * shift_step)]
    if search in ("mirror", "all"):
        grid += [mirrored(t) for t in grid]
    return grid


def undo_each(z: torch.Tensor, transforms: list[Transform]) -> torch.Tensor:
    """(T, C, H, W) -> (T, C, H, W): latent t under transform t alone (``undo``, one per latent)."""
    theta = torch.tensor([t.matrix for t in transforms], dtype=z.dtype)
    grid = F.affine_grid(theta, list(z.shape), align_corners=False)
    return F.grid_sample(z, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def undo(z: torch.Tensor, transforms: list[Transform]) -> torch.Tensor:
    """(B, C, H, W) -> (B, T, C, H, W): ``z`` under each transform (the identity is exact and
    costs no resampling)."""
    b, c, h, w = z.shape
    out = z[:, None].repeat(1, len(transforms), 1, 1, 1)
    moved = [i for i, t in enumerate(transforms) if t != IDENTITY]
    if moved:
        theta = torch.tensor([transforms[i].matrix for i in moved], dtype=z.dtype)
        grid = F.affine_grid(theta, [len(moved), c, h, w], align_corners=False)
        # the B latents' channels side by side, one grid per transform: no copy of z or the grids per latent
        warped = F.grid_sample(z.reshape(1, b * c, h, w).expand(len(moved), -1, -1, -1), grid, mode="bilinear",
                               padding_mode="zeros", align_corners=False)  # (T', B C, H, W)
        out[:, moved] = warped.view(len(moved), b, c, h, w).transpose(0, 1)
    return out
