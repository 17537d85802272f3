"""Issue 26 on `tiny`: does attack-aware (photometric) and adaptive recovery beat the encoder
under Tree-Ring's six attacks, and what does it cost? One key, N watermarked + N clean images
(50 generation steps), each attack at Tree-Ring's settings, `pipeline.detect` at the defaults
(search all, the shipped null model) with each recovery on the same attacked images.

    python docs/bench/attack_aware/measure.py -n 100    # writes docs/bench/attack_aware/tiny.json
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from watermark import Decision, Recovery, detect, get_model, make_key, watermarked_latents
from watermark.bench.attacks import ATTACKS, attack
from watermark.bench.detect import auc, tpr_at_fpr
from watermark.io.images import to_pil, to_tensor
from watermark.io.nullfile import find_null, load_null

RECOVERIES = {"encoder": Recovery(), "photometric": Recovery(photometric=True),
              "adaptive (anderson:10)": Recovery(refine="anderson:10"),
              "photometric + adaptive": Recovery(photometric=True, refine="anderson:10")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--recoveries", default=",".join(RECOVERIES))
    parser.add_argument("-o", default=str(Path(__file__).parent / "tiny.json"))
    args = parser.parse_args()
    model = get_model("tiny")
    key = make_key(model, seed=20261201)
    gen = lambda wm, s0: to_pil(torch.cat([model.generate(watermarked_latents(key, seeds=range(s0 + i, s0 + min(i + 16, args.n)), watermark=wm), 50)  # noqa: E731
                                           for i in range(0, args.n, 16)]))
    wm, clean = gen(True, 0), gen(False, 10**6)
    rng = np.random.default_rng(1)
    attacked = {a: (to_tensor([attack(im, a, rng) for im in wm]),
                    to_tensor([attack(im, a, rng) for im in clean])) for a in ATTACKS}
    res = {"n": args.n, "key": key.key_id, "recoveries": {}, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
           "date": time.strftime("%Y-%m-%d"), "command": "python docs/bench/attack_aware/measure.py " + " ".join(sys.argv[1:])}
    for name in args.recoveries.split(","):
        recovery = RECOVERIES[name]
        null = find_null("tiny", recovery.for_model(model.default_recovery), tuple(key.latent_shape))
        null = load_null(null) if null else None
        rows, seconds = {}, []
        for a, (w, c) in attacked.items():
            t0 = time.perf_counter()
            p = [np.array([d.p_value for i in range(0, len(x), 25)
                           for d in detect(model, x[i : i + 25], [key], recovery, Decision(), null=null)]) for x in (w, c)]
            seconds.append((time.perf_counter() - t0) / (2 * args.n))
            rows[a] = {"auc": auc(*p), "tpr_at_1pct_fpr": tpr_at_fpr(*p), "tpr_at_alpha": float(np.mean(p[0] <= 0.01)),
                       "fpr_at_alpha": float(np.mean(p[1] <= 0.01))}
            print(name, a, rows[a], flush=True)
        six = [a for a in ATTACKS if a != "none"]
        res["recoveries"][name] = {"rows": rows, "seconds_per_image": float(np.mean(seconds)),
                                   "mean_six_tpr_at_1pct_fpr": float(np.mean([rows[a]["tpr_at_1pct_fpr"] for a in six])),
                                   "mean_six_tpr_at_alpha": float(np.mean([rows[a]["tpr_at_alpha"] for a in six]))}
        print(name, {k: v for k, v in res["recoveries"][name].items() if k != "rows"}, flush=True)
        Path(args.o).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
