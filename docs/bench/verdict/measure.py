"""Verify's own path on images no threshold was tuned on (issue 34): per-key calibration of the full
default rule on held-out clean images, and detection under held-out edits and Tree-Ring's six,
for each way of using the null model (``Decision.test``: calibrated, whitened; or none).

Every number comes from ``pipeline.detect`` with the nulls ``Verifier`` finds (the default path);
the first look at a batch is taken once and given to ``detect`` for each key and candidate (it
does not depend on them), everything after it runs per key as ``verify`` runs it. Images are PNGs
made by ringmark (50 DDIM steps): clean from seeds 3e9.., watermarked from seeds 4e9.. (image s
carries the ``rand`` key of seed s + 7); the null models were made from seeds 1e9.. .

    python docs/bench/verdict/measure.py --clean /data/tiny-clean --wm /data/tiny-wm -o docs/bench/verdict/tiny.json

``--model`` measures another bundled model (its images made the same way, by that model).
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
from scipy import stats

from watermark.bench.attacks import ATTACKS, HELD_OUT as EDITS, attack
from watermark.bench.detect import tpr_at_fpr
from watermark.bench.null import holm
from watermark.io.images import to_tensor
from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, detect, make_key, run_look
from watermark.scheme.keys import new_key
from watermark.verifier import Verifier

ALPHA = 0.01
PATTERNS = ("rand", "ring", "ringid")


GEOMETRIC = ("rotation 20", "centre crop 80 %", "corner crop 77 %")
CANDIDATES = {"calibrated": dict(test="calibrated"), "whitened": dict(test="whitened"), "none": None}


def images(folder: str, n: int) -> tuple[list[int], list[Image.Image]]:
    files = sorted(Path(folder).glob("*.png"), key=lambda p: int(p.stem))[:n]
    return [int(f.stem) for f in files], [Image.open(f).convert("RGB") for f in files]


def p_values(model, verifier: Verifier, x: torch.Tensor, keys_per_image: list, candidate: str, batch_first=None) -> list:
    """The p-value ``detect`` gives each image for its own key (keys_per_image[i]) under ``candidate``."""
    spec = CANDIDATES[candidate]
    nulls = {} if spec is None else verifier.nulls
    decision = Decision(alpha=ALPHA, test=spec["test"] if spec else "calibrated")
    first = batch_first if batch_first is not None else run_look(model, x, verifier.recovery.looks()["first"])
    out = [None] * len(x)
    by_key: dict = {}
    for i, k in enumerate(keys_per_image):
        by_key.setdefault(k.key_id, (k, []))[1].append(i)
    for key, idx in by_key.values():
        sub = first.rows(idx)
        for i, d in zip(idx, detect(model, x[idx], [key], verifier.recovery, decision, nulls=nulls, taken={"first": sub})):
            out[i] = d.p_value
    return out


def calibration(model, clean: list[Image.Image], n_keys: int, candidates, log, patterns=PATTERNS) -> dict:
    """Per key: clean images flagged at ALPHA under the default rule, each pattern, each candidate.
    The first look at a batch is taken once for every pattern and key; counts are logged after each
    batch, so a stopped run still says how far it got."""
    x_all = to_tensor(clean)
    keys = {pattern: [make_key(model, pattern=pattern, seed=777_000 + 10 * PATTERNS.index(pattern) + j) for j in range(n_keys)]
            for pattern in patterns}
    verifier = Verifier(keys[patterns[0]][:1], Recovery(), Decision(alpha=ALPHA))
    flagged = {(c, pattern): [0] * n_keys for c in candidates for pattern in patterns}
    done = 0
    for b in range(0, len(x_all), 50):
        x = x_all[b : b + 50]
        first = run_look(model, x, verifier.recovery.looks()["first"])
        for pattern in patterns:
            for c in candidates:
                for j, key in enumerate(keys[pattern]):
                    p = p_values(model, verifier, x, [key] * len(x), c, first)
                    flagged[c, pattern][j] += int(np.sum(np.array(p) <= ALPHA))
        done += len(x)
        log(f"calibration after {done} images: " + ", ".join(f"{c} {pt} {f}" for (c, pt), f in flagged.items()))
    out = {}
    for (c, pattern), f in flagged.items():
        pv = [stats.binomtest(k, done, ALPHA, alternative="greater").pvalue for k in f]
        out.setdefault(c, {})[pattern] = {"keys": n_keys, "images": done, "flagged": f,
                                          "pooled_rate": sum(f) / (done * n_keys),
                                          "worst_key_rate": max(f) / done,
                                          "liberal_keys_holm": int(holm(np.array(pv)).sum())}
        log(f"calibration {c} {pattern}: {out[c][pattern]}")
    return out


def edited_power(model, wm: list[Image.Image], keys: list, candidates, log) -> dict:
    verifier = Verifier(keys[:1], Recovery(), Decision(alpha=ALPHA))
    out = {}
    for name, edit in {"none": lambda im, rng: im, **EDITS}.items():
        rng = np.random.default_rng(1)
        x = to_tensor([edit(im, rng) for im in wm])
        first = run_look(model, x, verifier.recovery.looks()["first"])
        for c in candidates:
            p = np.array(p_values(model, verifier, x, keys, c, first))
            out.setdefault(c, {})[name] = {"detected": int((p <= ALPHA).sum()), "n": len(p), "tpr": float(np.mean(p <= ALPHA))}
            log(f"edit {name} {c}: {out[c][name]}")
    for c in candidates:
        unseen = [e for e in EDITS if e != "horizontal mirror"]
        out[c]["geometric_tpr"] = float(np.mean([out[c][e]["tpr"] for e in GEOMETRIC]))
        out[c]["mean_tpr_ten"] = float(np.mean([out[c][e]["tpr"] for e in unseen]))
        out[c]["mean_tpr_eleven"] = float(np.mean([out[c][e]["tpr"] for e in EDITS]))
    return out


def tree_ring_six(model, wm, clean, keys, log, candidate="calibrated", attacks=ATTACKS) -> dict:
    verifier = Verifier(keys[:1], Recovery(), Decision(alpha=ALPHA))
    rows = {}
    for a in attacks:
        rng = np.random.default_rng(2)
        xw = to_tensor([attack(im, a, rng) for im in wm])
        xc = to_tensor([attack(im, a, rng) for im in clean])
        pw = np.array(p_values(model, verifier, xw, keys, candidate))
        pc = np.array([v for b in range(0, len(xc), 48) for v in
                       p_values(model, verifier, xc[b : b + 48], [keys[i % len(keys)] for i in range(b, min(b + 48, len(xc)))],
                                candidate)])
        rows[a] = {"tpr_at_1pct_fpr": tpr_at_fpr(pw, pc), "tpr_at_alpha": float(np.mean(pw <= ALPHA)),
                   "fpr_at_alpha": float(np.mean(pc <= ALPHA))}
        log(f"tree-ring {a}: {rows[a]}")
    if set(attacks) == set(ATTACKS):
        rows["mean_of_six"] = float(np.mean([rows[a]["tpr_at_1pct_fpr"] for a in ATTACKS if a != "none"]))
    return rows


def timing(model, wm, keys, log) -> dict:
    """Seconds per unattacked image in batches of 16, once a process has started: the default
    verify (null models, looks, mirrors searched) against the encoder alone with the same search
    and no null model, in alternation (medians of 3 rounds), each Verifier made once as ``verify``
    makes it. The first batch of each is timed apart: its start-up (``calibrated.spread`` measures
    each null model's scale under the search once per process) is paid once per run, not per image."""
    x = to_tensor(wm[:32])
    settings = {"default": (Recovery(), "auto"),
                "encoder alone": (Recovery("encoder", refine="none", photometric=False), "none")}
    verifiers = {name: Verifier(keys[:1], recovery, Decision(alpha=ALPHA), null=null)
                 for name, (recovery, null) in settings.items()}
    out, rounds = {}, {name: [] for name in settings}
    for name, v in verifiers.items():
        t0 = time.perf_counter()
        detect(model, x[:16], keys[:1], v.recovery, v.decision, nulls=v.nulls)
        out[f"first batch of 16, {name} (s)"] = time.perf_counter() - t0
    for _ in range(3):
        for name, v in verifiers.items():
            t0 = time.perf_counter()
            for b in range(0, 32, 16):
                detect(model, x[b : b + 16], keys[:1], v.recovery, v.decision, nulls=v.nulls)
            rounds[name].append((time.perf_counter() - t0) / 32)
    out.update({k: float(np.median(v)) for k, v in rounds.items()})
    out["ratio"] = out["default"] / out["encoder alone"]
    out["start_up_s"] = out["first batch of 16, default (s)"] - 16 * out["default"]
    log(f"timing: {out}")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--clean", required=True)
    ap.add_argument("--wm", required=True)
    ap.add_argument("--n-clean", type=int, default=1000)
    ap.add_argument("--n-keys", type=int, default=2)
    ap.add_argument("--candidates", default="calibrated,none")
    ap.add_argument("--parts", default="edits,six,calibration")
    ap.add_argument("--patterns", default=",".join(PATTERNS), help="patterns the calibration part measures")
    ap.add_argument("--six-attacks", default=",".join(ATTACKS), help="the attacks the six part measures")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = get_model(args.model)
    shape = model.latent_shape(model.default_size)
    seeds, wm = images(args.wm, 10**6)
    keys = [new_key(args.model, shape, seed=s + 7) for s in seeds]
    _, clean = images(args.clean, args.n_clean)
    candidates = args.candidates.split(",")
    res = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
           f"{torch.get_num_threads()} threads, torch {torch.__version__}",
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "date": time.strftime("%Y-%m-%d"), "model": args.model, "watermarked": len(wm), "clean": len(clean), "alpha": ALPHA}
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.output)
    if out.exists():
        res = {**json.loads(out.read_text()), **{k: res[k] for k in ("command", "machine", "commit", "date")}}
    parts = args.parts.split(",")
    if "edits" in parts:
        res["edits"] = edited_power(model, wm, keys, candidates, log)
        out.write_text(json.dumps(res, indent=1))
    if "six" in parts:
        six = tree_ring_six(model, wm, clean[:200], keys, log, candidates[0], tuple(args.six_attacks.split(",")))
        res["tree_ring_six" if candidates[0] == "calibrated" else f"tree_ring_six_{candidates[0]}"] = six
        out.write_text(json.dumps(res, indent=1))
    if "timing" in parts:
        res["timing"] = timing(model, wm, keys, log)
        out.write_text(json.dumps(res, indent=1))
    if "calibration" in parts:
        res["calibration"] = calibration(model, clean, args.n_keys, candidates, log, tuple(args.patterns.split(",")))
        out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
