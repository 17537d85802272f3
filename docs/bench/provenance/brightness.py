"""Why Tree-Ring's brightness defeats the content test, and what a clip-aware comparison would buy
(issue 35). Each watermarked image brightened by a fixed factor f (``ImageEnhance.Brightness``,
as Tree-Ring's ColorJitter draws f from U(0, 7)), compared with its own thumbnail and ranked among
the model's shipped reference thumbnails, with the transform known (the identity): the content
test alone, as ``provenance.check`` asks it (similarity >= ``MIN_SIMILARITY`` and rank p <= alpha).

- ``shipped``: ``fingerprint.pixel_similarity`` (the best of three masks: all cells, those not more
  than half clipped, and those also not under a solid clipped patch; no match with under a quarter
  of the cells left);
- ``censored``: a clip-aware model, not shipped: the suspect's luminance thumbnail q (in [0, 1])
  against min(g s, 1) for the logged thumbnail s over gains g in [1, 8] (brightening scales about
  black, then clips), one minus the residual relative to the prediction's spread; ``either``: the
  larger of the two.

    python docs/bench/provenance/brightness.py --wm DATA/tiny-wm -n 48 -o docs/bench/provenance/brightness.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance

from watermark.io.images import to_tensor
from watermark.provenance import fingerprint
from watermark.provenance.check import reference_pool
from watermark.scheme.geometry import IDENTITY

from stamp import finish  # beside this script

FACTORS = (0.2, 0.35, 0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5)
GAINS = torch.exp(torch.linspace(0, np.log(8), 64))
ALPHA = 0.01


def censored(x: torch.Tensor, logged: np.ndarray) -> np.ndarray:
    q = (fingerprint.luma(fingerprint.pixels(x[None]).view(1, 3, -1))[0, 0] + 1) / 2  # (P,)
    s = (fingerprint.luma(torch.from_numpy(logged).view(len(logged), 3, -1))[:, 0] + 1) / 2  # (m, P)
    predicted = (GAINS[:, None, None] * s[None]).clamp(max=1)  # (G, m, P)
    res = ((q - predicted) ** 2).sum(-1)
    spread = ((predicted - predicted.mean(-1, keepdim=True)) ** 2).sum(-1).clamp_min(1e-12)
    return (1 - (res / spread).sqrt()).max(0).values.numpy()


def passed(sims: np.ndarray) -> bool:
    rank = (1 + np.sum(sims[1:] >= sims[0])) / len(sims)
    return bool(sims[0] >= fingerprint.MIN_SIMILARITY and rank <= ALPHA)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wm", required=True, help="a folder of watermarked PNGs (make_images.py ... wm)")
    parser.add_argument("-n", type=int, default=48)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    t0 = time.perf_counter()
    pool = reference_pool(args.model, (4, 32, 32))
    images = [Image.open(p).convert("RGB") for p in sorted(Path(args.wm).glob("*.png"))[: args.n]]
    res = {"n": len(images), "pool": len(pool), "factors": {}}
    for f in FACTORS:
        rows = []
        for im in images:
            logged = np.concatenate([fingerprint.pixels(to_tensor([im])).numpy(), pool])
            x = to_tensor([ImageEnhance.Brightness(im).enhance(f)])[0]
            a, b = fingerprint.pixel_similarity(x, logged, [IDENTITY]), censored(x, logged)
            rows.append((passed(a), passed(b), passed(np.maximum(a, b)), np.isinf(a[0]),
                         float((x.abs() >= fingerprint.CLIP_LEVEL).any(0).float().mean())))
        r = np.array(rows, dtype=float).mean(0)
        res["factors"][f"{f:g}"] = dict(zip(("shipped", "censored", "either", "too_few_cells", "clipped_pixels"),
                                            np.round(r, 3).tolist()))
        print(f, res["factors"][f"{f:g}"], flush=True)
    finish(res, t0, args.output)


if __name__ == "__main__":
    main()
