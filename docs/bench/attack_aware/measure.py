"""Issue 26: does attack-aware and adaptive recovery beat the encoder under Tree-Ring's six
attacks, and what does it cost? One key, N watermarked + N clean images (50 generation steps),
each attack at Tree-Ring's settings, `pipeline.detect` at the defaults (search all, the shipped
null model where one matches the recovery) with each recovery on the same attacked images. The
brightness rows also break TPR down by the factor drawn (what the clip leaves to recover).

    python docs/bench/attack_aware/measure.py -n 100    # writes docs/bench/attack_aware/tiny.json

A run with --recoveries/--attacks merges its rows into the file of an earlier run with the same
model, n and key (the images are the same: fixed seeds).
"""

import argparse
import copy
import json
import os
import platform
import subprocess
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

RECOVERIES = {"encoder": Recovery("encoder"), "photometric": Recovery("encoder", photometric=True),
              "fixed_point:10": Recovery("fixed_point", 10),
              "photometric + attack_aware:10": Recovery("attack_aware", 10, photometric=True),
              "adaptive (anderson:10)": Recovery("encoder", refine="anderson:10"),
              "photometric + adaptive (anderson:10)": Recovery("encoder", photometric=True, refine="anderson:10"),
              "photometric + adaptive (attack_aware:10)": Recovery("encoder", photometric=True, refine="attack_aware:10"),
              "photometric + adaptive (attack_aware:5)": Recovery("encoder", photometric=True, refine="attack_aware:5"),
              "photometric + adaptive (attack_aware:2)": Recovery("encoder", photometric=True, refine="attack_aware:2")}
BINS = (0, 0.5, 1, 2, 3, 7)  # brightness factor bins for the breakdown


def attacked_images(model, key, n: int) -> tuple[dict, np.ndarray]:
    """{attack: (watermarked, clean) tensors} and the brightness factor each watermarked image drew."""
    gen = lambda wm, s0: to_pil(torch.cat([model.generate(watermarked_latents(key, seeds=range(s0 + i, s0 + min(i + 16, n)), watermark=wm), 50)  # noqa: E731
                                           for i in range(0, n, 16)]))
    wm, clean = gen(True, 0), gen(False, 10**6)
    rng, factors = np.random.default_rng(1), []
    out = {}
    for a in ATTACKS:
        w = []
        for im in wm:
            if a == "brightness":
                factors.append(copy.deepcopy(rng).uniform(0, 7))  # the draw attack() is about to make
            w.append(attack(im, a, rng))
        out[a] = (to_tensor(w), to_tensor([attack(im, a, rng) for im in clean]))
    return out, np.array(factors)


def by_factor(p_wm: np.ndarray, p_clean: np.ndarray, factors: np.ndarray) -> dict:
    """TPR at 1 % FPR (threshold from all the clean images) for each bin of brightness factors."""
    k = max(1, int(np.floor(0.01 * len(p_clean))))
    threshold = np.sort(p_clean)[k - 1]
    return {f"{lo}-{hi}": {"n": int(m.sum()), "tpr_at_1pct_fpr": float(np.mean(p_wm[m] <= threshold)) if m.any() else None}
            for lo, hi in zip(BINS[:-1], BINS[1:]) for m in [(factors >= lo) & (factors < hi)]}


def measure(model, key, recovery, attacked: dict, factors: np.ndarray) -> dict:
    """One recovery on every attack: rows, seconds per image, the means over the six attacks."""
    null = find_null(model.name, recovery.for_model(model.default_recovery).looks()["first"], tuple(key.latent_shape))
    null = load_null(null) if null else None
    rows, seconds = {}, []
    for a, (w, c) in attacked.items():
        t0 = time.perf_counter()
        found = [[d for i in range(0, len(x), 25) for d in detect(model, x[i : i + 25], [key], recovery, Decision(),
                                                                   null=null)] for x in (w, c)]
        seconds.append((time.perf_counter() - t0) / (len(w) + len(c)))
        p = [np.array([d.p_value for d in ds]) for ds in found]
        refined = float(np.mean([d.iterations > 0 for ds in found for d in ds]))  # images given decoder iterations
        rows[a] = {"auc": auc(*p), "tpr_at_1pct_fpr": tpr_at_fpr(*p), "tpr_at_alpha": float(np.mean(p[0] <= 0.01)),
                   "fpr_at_alpha": float(np.mean(p[1] <= 0.01)), "seconds_per_image": seconds[-1],
                   "refined_share": refined}
        if a == "brightness":
            rows[a]["by_factor"] = by_factor(*p, factors)
        print(recovery.label, a, rows[a], flush=True)
    return {"rows": rows, "seconds_per_image": float(np.mean(seconds)), "null": bool(null)}


def commit() -> str:
    """The commit measured, with "+" if the working tree differs from it."""
    run = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()  # noqa: E731
    return run("rev-parse", "--short", "HEAD") + ("+" if run("status", "--porcelain", "--", "../../../watermark", "../../../inversion") else "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--recoveries", default=",".join(RECOVERIES))
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("-o", default=None, help="default: docs/bench/attack_aware/MODEL.json")
    args = parser.parse_args()
    out = Path(args.o or Path(__file__).parent / f"{args.model}.json")
    measured = commit()
    model = get_model(args.model)
    key = make_key(model, seed=20261201)
    attacked, factors = attacked_images(model, key, args.n)
    attacked = {a: attacked[a] for a in args.attacks.split(",")}
    res = json.loads(out.read_text()) if out.exists() else {}
    if (res.get("n"), res.get("key"), res.get("model", "tiny")) != (args.n, key.key_id, args.model):
        res = {"n": args.n, "key": key.key_id, "model": args.model, "recoveries": {}}
    res.update(machine=f"{platform.machine()}, {os.cpu_count()} CPUs", date=time.strftime("%Y-%m-%d"))
    res.setdefault("commands", []).append("python docs/bench/attack_aware/measure.py " + " ".join(sys.argv[1:]))
    six = [a for a in ATTACKS if a != "none"]
    for name in args.recoveries.split(","):
        got = res["recoveries"].setdefault(name, {"rows": {}})
        new = measure(model, key, RECOVERIES[name], attacked, factors)
        got["rows"].update(new["rows"])
        got["null"] = new["null"]
        got["commit"] = measured  # what was timed (the VAE runs in chunks on a CPU from bf23935 on)
        rows = got["rows"]
        got["seconds_per_image"] = float(np.mean([r["seconds_per_image"] for r in rows.values() if "seconds_per_image" in r]))
        if all(a in rows for a in six):
            got["mean_six_tpr_at_1pct_fpr"] = float(np.mean([rows[a]["tpr_at_1pct_fpr"] for a in six]))
            got["mean_six_tpr_at_alpha"] = float(np.mean([rows[a]["tpr_at_alpha"] for a in six]))
        print(name, {k: v for k, v in got.items() if k != "rows"}, flush=True)
        out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
