"""Attack-aware recovery, photometric part: undo a global brightness change before decoder
inversion (``Recovery(photometric=True)``, ``--photometric``).

Tree-Ring's brightness jitter multiplies every pixel by a factor f drawn from [0, 7] and clips
at white: above f = 1 most of the image saturates, below it the image darkens. Neither the
encoder nor a decoder-inversion iteration can tell f from the image alone (the decoder renders
dark and bright images alike), so f is estimated against the model's own images: the share s of
saturated pixels says where the model's pooled pixel distribution was cut (f = 1 / Q(1 - s), Q
its quantile function); with none saturated, the image's 99th percentile against the model's
gives f. Then x / f, with each saturated pixel filled with the model's mean pixel value above
the cut (what a clipped pixel held on average). The correction never sees a key: under the null
the p-value stays calibrated (tested on clean images).

The model's pixel quantiles come from REFERENCE_IMAGES of its own clean generations (fixed
seeds, REFERENCE_STEPS steps), made once per model object when first asked for (about 4 s for
`tiny` on 2 CPU cores); the bundled models ship theirs (QUANTILES_FILE in the model's folder,
written by ``python -m watermark.photometric NAME``, checked against a fresh computation by a test).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

SATURATED = 254.5 / 255  # a pixel at 255 in 8 bits
MIN_SATURATED = 0.01  # share of saturated pixels above which the cut, not the 99th percentile, sets f
REFERENCE_IMAGES, REFERENCE_STEPS, REFERENCE_SEED = 32, 10, 424242
GRID = np.linspace(0, 1, 201)  # the quantile levels kept
QUANTILES_FILE = "pixel_quantiles.json"


def shipped(name: str) -> Path:
    """Where a bundled model's quantiles are kept (its folder; the file may not exist)."""
    from .models import NAMED

    return Path(NAMED.get(name, "/nonexistent")) / QUANTILES_FILE


def reference_quantiles(model) -> np.ndarray:
    """The model's pooled pixel quantiles (in [0, 1]) at GRID, kept on the model object."""
    kept = getattr(model, "_pixel_quantiles", None)
    if kept is None and shipped(model.name).is_file():
        kept = np.array(json.loads(shipped(model.name).read_text())["quantiles"])
        object.__setattr__(model, "_pixel_quantiles", kept)
    if kept is None:
        kept = compute_quantiles(model)
        object.__setattr__(model, "_pixel_quantiles", kept)  # frozen dataclasses too
    return kept


@torch.inference_mode()
def compute_quantiles(model) -> np.ndarray:
    """The model's pooled pixel quantiles at GRID from REFERENCE_IMAGES of its clean generations."""
    g = torch.Generator().manual_seed(REFERENCE_SEED)
    z_T = torch.randn(REFERENCE_IMAGES, *model.latent_shape(model.default_size), generator=g)
    images = torch.cat([model.generate(z_T[i : i + 8].to(model.device, model.dtype), REFERENCE_STEPS).float().cpu()
                        for i in range(0, len(z_T), 8)])
    return np.quantile(images.numpy().ravel(), GRID)


def gain(v: torch.Tensor, q: np.ndarray) -> float:
    """The brightness factor f of one image ``v`` (3, H, W) in [0, 1], against quantiles ``q``."""
    s = float((v >= SATURATED).float().mean())
    if s > MIN_SATURATED:
        cut = float(np.interp(1 - s, GRID, q))  # the model's pixel value that f took to white
        return 1 / max(cut, 1e-3)
    return max(upper_quantile(v.flatten().float(), 0.99), 1e-3) / max(float(np.interp(0.99, GRID, q)), 1e-3)


def upper_quantile(v: torch.Tensor, level: float) -> float:
    """``torch.quantile(v, level)`` (linear interpolation) of a 1-D tensor from its top values
    only: torch.quantile sorts all of them, 12 ms for a 128-px image against 0.15 ms here."""
    pos = level * (len(v) - 1)
    lo = int(pos)
    top = torch.topk(v, len(v) - lo).values  # descending: top[-1] is the sorted v[lo], top[-2] v[lo + 1]
    a, b = float(top[-1]), float(top[-2] if len(top) > 1 else top[-1])
    return a + (b - a) * (pos - lo)


def mean_above(q: np.ndarray, cut: float) -> float:
    """The model's mean pixel value above ``cut`` (from its quantiles)."""
    above = q[q > cut]
    return float(above.mean()) if len(above) else 1.0


def normalize(x: torch.Tensor, q: np.ndarray) -> torch.Tensor:
    """Images (B, 3, H, W) in [-1, 1] with their brightness change undone (module docstring)."""
    out = []
    for image in x:
        v = (image.float() + 1) / 2
        f = gain(v, q)
        u = torch.where(v >= SATURATED, torch.full_like(v, mean_above(q, 1 / f)), v / f)
        out.append(u.clamp(0, 1) * 2 - 1)
    return torch.stack(out).to(x.dtype)


if __name__ == "__main__":  # python -m watermark.photometric NAME: write a bundled model's quantiles
    from .models import get_model

    name = sys.argv[1]
    q = compute_quantiles(get_model(name))
    shipped(name).write_text(json.dumps({"grid": len(GRID), "images": REFERENCE_IMAGES, "steps": REFERENCE_STEPS,
                                         "seed": REFERENCE_SEED, "quantiles": [round(float(v), 6) for v in q]}) + "\n")
    print(f"wrote {shipped(name)}")
