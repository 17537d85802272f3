"""The content test against the strongest forger of the thumbnail (issue 35): how often can a
cover, moved as far toward a watermarked source's thumbnail as a PSNR floor allows
(``forgery.thumbnail_forgery``, in closed form), pass ``verify --log``'s content test at alpha?

The test as ``provenance.check`` runs it: the forged image's ``fingerprint.pixel_similarity`` to
the source's logged thumbnail, ranked among its similarities to a reference pool of other clean
generations. Covers: other clean model images and photographs; every cover against every source.
The forger is given the seed test for free (it can copy the source's z_T); only content is asked.

    python docs/bench/provenance/forger_bound.py --wm /data/tiny-wm --clean /data/tiny-clean \\
        --pool 200 --covers 100 --sources 4 -o docs/bench/provenance/forger-bound.json
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from watermark.bench.forgery import thumbnail_forgery
from watermark.bench.null import photographs
from watermark.io.images import to_tensor
from watermark.pipeline import psnr
from watermark.provenance import fingerprint
from watermark.scheme.geometry import IDENTITY

ALPHA = 0.01
FLOORS = (40.0, 35.0, 30.0, 25.0, 20.0, 15.0)
MINIMA = (0.6, 0.7, 0.8, 0.85, 0.9)  # candidate floors of the similarity


def pngs(folder: str, first: int, n: int) -> torch.Tensor:
    files = sorted(Path(folder).glob("*.png"), key=lambda p: int(p.stem))[first : first + n]
    return to_tensor([Image.open(f).convert("RGB") for f in files])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wm", required=True)
    ap.add_argument("--clean", required=True)
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--covers", type=int, default=100)
    ap.add_argument("--sources", type=int, default=4)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    pool = fingerprint.pixels(pngs(args.clean, 0, args.pool)).numpy()
    sources = pngs(args.wm, 0, args.sources)
    covers = {"model images": pngs(args.clean, args.pool, args.covers),
              "photographs": photographs(args.covers, sources.shape[-1], seed=35)}
    res = {"alpha": ALPHA, "pool": len(pool), "sources": len(sources), "floors": {}}
    for floor in FLOORS:
        row = {}
        for kind, cov in covers.items():
            passed, sims, dbs = [], [], []
            for s in sources:
                logged = np.concatenate([fingerprint.pixels(s[None]).numpy(), pool])
                forged = thumbnail_forgery(cov, s[None], floor)
                dbs.append(psnr(forged, cov))
                for x in forged:
                    sim = fingerprint.pixel_similarity(x, logged, [IDENTITY])
                    p = (1 + int(np.sum(sim[1:] >= sim[0]))) / (1 + len(pool))
                    passed.append(p <= ALPHA)
                    sims.append(sim[0])
            sims, passed = np.array(sims), np.array(passed)
            row[kind] = {"n": len(passed), "passed": float(np.mean(passed)), "similarity_mean": float(np.mean(sims)),
                         "similarity_quantiles_50_90_99_max": np.quantile(sims, [0.5, 0.9, 0.99, 1]).round(3).tolist(),
                         **{f"passed_and_similarity_{m:g}": float(np.mean(passed & (sims >= m))) for m in MINIMA},
                         "psnr_mean": float(np.concatenate(dbs).mean())}
        res["floors"][f"{floor:g} dB"] = row
        print(f"{floor:g} dB", json.dumps(row), flush=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res.update(machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               commit=commit, command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d"))
    Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
