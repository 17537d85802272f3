"""Clip-level false positives through verify's own path (issue 38): clean clips (no key) made by a
video model, written as H.264 MP4 (CRF 18) or lossless FFV1, read back and verified with
``api.verify`` against one fresh ``rand`` key each, with every default. The share flagged at
alpha = 0.01 is compared with alpha by a two-sided binomial test.

No trained video model exists here: the model is a tiny random Wan 2.1 checkpoint (the tests'
``families.wan``), so this measures the clip test and the file path on what such a model's
recovery gives, not detection.

    python docs/bench/video/calibration.py -n 400 -o docs/bench/video/calibration.json

``--attacks`` instead: each clean clip edited by each of ``bench.video_attacks.VIDEO_ATTACKS``
(re-encoding at CRF 23/28/35, frame drop, temporal crop, crop and resize, frame-rate change), the
clip generated once for all of them:

    python docs/bench/video/calibration.py -n 200 --attacks all -o docs/bench/video/calibration-attacks.json
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
from watermark.bench.video_attacks import VIDEO_ATTACKS, attack_clip  # noqa: E402
from watermark.io.videos import save_video  # noqa: E402

ALPHA = 0.01


def summary(p: np.ndarray, seconds: float, n: int) -> dict:
    flagged = int((p <= ALPHA).sum())
    return {"clips": n, "flagged": flagged, "rate": flagged / n,
            "binomial_p_two_sided": stats.binomtest(flagged, n, ALPHA).pvalue,
            "ks_uniform_p": stats.kstest(p, "uniform").pvalue, "seconds_per_clip": seconds / n}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--attacks", default=None, help="'all' or a comma-separated list of VIDEO_ATTACKS")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    attacks = None if args.attacks is None else VIDEO_ATTACKS if args.attacks == "all" else args.attacks.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = families.wan(tmp / "wan")
        model = get_model(str(folder))
        shape = model.latent_shape(args.size)
        frames = model.latent_frames(args.frames)

        def key_of(i: int):  # a fresh key per clip
            return new_key(str(folder), shape, seed=10**6 + i)

        def clip_of(i: int) -> torch.Tensor:  # clean clip i: (F, 3, H, W) in [0, 1]
            z_T = watermarked_latents(key_of(i), seeds=[7 * 10**6 + i], frames=frames, watermark=False)
            return model.generate(z_T, args.steps)[0]

        out = {}
        if attacks is None:
            for kind, lossless in (("mp4", False), ("mkv", True)):
                p, t0 = [], time.perf_counter()
                for i in range(args.n):
                    clip = tmp / f"{i}.{kind}"
                    save_video(clip_of(i), clip, lossless=lossless)
                    p.append(api.verify([str(clip)], [key_of(i)])[0].p_value)
                    clip.unlink()
                out[kind] = summary(np.array(p), time.perf_counter() - t0, args.n)
                print(kind, out[kind], file=sys.stderr, flush=True)
        else:
            p = {a: [] for a in attacks}
            t0 = time.perf_counter()
            for i in range(args.n):
                frames_i = clip_of(i)
                for a in attacks:
                    clip = tmp / f"{i}.mp4"
                    attack_clip(frames_i, a, clip)
                    p[a].append(api.verify([str(clip)], [key_of(i)])[0].p_value)
                    clip.unlink()
                if (i + 1) % 50 == 0:
                    print(i + 1, {a: int((np.array(v) <= ALPHA).sum()) for a, v in p.items()}, file=sys.stderr, flush=True)
            seconds = time.perf_counter() - t0
            out["attacks"] = {a: summary(np.array(v), seconds / len(attacks), args.n) for a, v in p.items()}
    res = {"command": "python " + " ".join(sys.argv), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
           "model": "tiny random Wan 2.1 (tests/families.py: wan)", "frames": args.frames, "size": args.size,
           "alpha": ALPHA, **out}
    Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
