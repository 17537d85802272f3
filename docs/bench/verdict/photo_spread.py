"""Why a key can be liberal on photographs (issue 34): the calibrated test divides t by the spread
along the key that the null model measured on the model's own clean images; on photographs that
spread differs per key. For each of 62 keys per pattern (the two measure.py tested, then 60 more),
the spread kappa along the key (``calibrated.spread``, no transform) from the first look's z_T of
photographs, taken about the null model's mean as the test takes it, over kappa from the null
model's samples.

    python docs/bench/verdict/photo_spread.py --photos DATA/photos -o docs/bench/verdict/photo-spread.json

DATA/photos: ``make_images.py tiny DATA/photos 5000000000 2000 photos``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, make_key, run_look
from watermark.scheme.calibrated import spread
from watermark.scheme.geometry import search_grid
from watermark.scheme.null import NullModel
from watermark.verifier import Verifier

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from measure import PATTERNS, images  # noqa: E402

from watermark.io.images import to_tensor  # noqa: E402


def spread_ratio(null: NullModel, z_T: torch.Tensor, keys: list, transforms: list) -> np.ndarray:
    """Per key, kappa along it from the z_T given (about the null model's mean, as the test reads
    them) over kappa from the null model's samples, under the first of ``transforms``."""
    other = NullModel(tuple(z_T.shape[1:])).update(z_T.double())
    other = replace(other, sum_z=null.mean() * other.n, cache={})
    return (spread(other, keys, transforms)[0] / spread(null, keys, transforms)[0]).numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", required=True)
    ap.add_argument("-n", type=int, default=2000)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    model = get_model("tiny")
    verifier = Verifier([make_key(model, seed=1)], Recovery(), Decision())
    first, null = verifier.recovery.looks()["first"], verifier.nulls["first"]
    _, photos = images(args.photos, args.n)
    z_T = torch.cat([run_look(model, to_tensor(photos[b : b + 50]), first).z_T for b in range(0, len(photos), 50)])
    identity = search_grid("none", z_T.shape[-1])
    out = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "date": time.strftime("%Y-%m-%d"), "photographs": len(z_T), "null_samples": null.n, "ratio": {}}
    for pattern in PATTERNS:
        seeds = [777_000 + 10 * PATTERNS.index(pattern) + j for j in range(2)] + [900_000 + j for j in range(60)]
        keys = [make_key(model, pattern=pattern, seed=s) for s in seeds]
        r = spread_ratio(null, z_T, keys, identity)
        out["ratio"][pattern] = {"measured_keys": r[:2].round(3).tolist(), "mean": float(r.mean()),
                                 "q90": float(np.quantile(r, 0.9)), "max": float(r.max()), "min": float(r.min()),
                                 "above_1.1": int((r > 1.1).sum()), "keys": len(r)}
        print(pattern, out["ratio"][pattern], file=sys.stderr)
    open(args.output, "w").write(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
