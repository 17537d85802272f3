"""Clip-level false positives through verify's own path (issue 38): clean clips (no key) made by a
video model, written as H.264 MP4 (CRF 18) or lossless FFV1, read back and verified with
``api.verify`` against one fresh ``rand`` key each, with every default. The share flagged at
alpha = 0.01 is compared with alpha by a two-sided binomial test.

No trained video model exists here: the model is a tiny random Wan 2.1 checkpoint (the tests'
``families.wan``), so this measures the clip test and the file path on what such a model's
recovery gives, not detection.

    python docs/bench/video/calibration.py -n 400 -o docs/bench/video/calibration.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
import families  # noqa: E402

from watermark import api  # noqa: E402
from watermark.models import get_model  # noqa: E402
from watermark.scheme.embedding import watermarked_latents  # noqa: E402
from watermark.scheme.keys import new_key  # noqa: E402
from watermark.io.videos import save_video  # noqa: E402

ALPHA = 0.01


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = families.wan(tmp / "wan")
        model = get_model(str(folder))
        shape = model.latent_shape(args.size)
        frames = model.latent_frames(args.frames)
        out = {}
        for kind, lossless in (("mp4", False), ("mkv", True)):
            p, t0 = [], time.perf_counter()
            for i in range(args.n):
                key = new_key(str(folder), shape, seed=10**6 + i)  # a fresh key per clip
                z_T = watermarked_latents(key, seeds=[7 * 10**6 + i], frames=frames, watermark=False)
                clip = tmp / f"{i}.{kind}"
                save_video(model.generate(z_T, args.steps)[0], clip, lossless=lossless)
                p.append(api.verify([str(clip)], [key])[0].p_value)
                clip.unlink()
            p = np.array(p)
            flagged = int((p <= ALPHA).sum())
            out[kind] = {"clips": args.n, "flagged": flagged, "rate": flagged / args.n,
                         "binomial_p_two_sided": stats.binomtest(flagged, args.n, ALPHA).pvalue,
                         "ks_uniform_p": stats.kstest(p, "uniform").pvalue,
                         "seconds_per_clip": (time.perf_counter() - t0) / args.n}
            print(kind, out[kind], file=sys.stderr, flush=True)
    res = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "model": "tiny random Wan 2.1 (tests/families.py: wan)", "frames": args.frames, "size": args.size,
           "alpha": ALPHA, **out}
    Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
