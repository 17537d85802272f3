"""Issue 26: which adaptive rule and which second look pay for their time? One run gives every
image's first-look p (the encoder on the photometrically corrected image, ``pipeline.detect``) and,
for every image the widest rule would send to a second look (``adaptive.unclear`` with the weak
band WEAK_EVIDENCE and the ``edited`` rule), the second look's p after 2, 3, 5 and 10 attack-aware
iterations, as the forward step and Anderson-mixed. Narrower rules refine a subset of those images,
so each (rule, variant, iterations) is evaluated from the same numbers: TPR at 1 % FPR under
Tree-Ring's six attacks, the share refined, and the seconds per image it implies from the measured
costs (first look per image; one iteration and one DDIM inversion per refined image).

    python docs/bench/attack_aware/study.py -n 100     # writes docs/bench/attack_aware/study-tiny.json

The same attacked images as measure.py (same seeds). `measure.py` then times the chosen rule end to end.
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

sys.path.insert(0, str(Path(__file__).parent))
from measure import attacked_images, commit  # noqa: E402

from inversion import attack_aware  # noqa: E402
from watermark import Decision, Recovery, detect, get_model, make_key  # noqa: E402
from watermark.adaptive import EDITED, LOOKS, clipped_share  # noqa: E402
from watermark.bench.attacks import ATTACKS  # noqa: E402
from watermark.bench.detect import tpr_at_fpr  # noqa: E402
from watermark.io.nullfile import find_null, load_null  # noqa: E402
from watermark.pipeline import WEAK_EVIDENCE, noise_from_latents, prepare  # noqa: E402
from watermark.scheme.detection import match_keys  # noqa: E402
from watermark.scheme.geometry import search_grid  # noqa: E402

ALPHA = 0.01
CHECKPOINTS = (2, 3, 5, 10)  # iterations at which the second look's p is taken
VARIANTS = {"forward step": 0, "anderson (memory 5)": 5}
UPPER = (10.0, 5.0, 3.0, 2.0)  # the weak band's upper factor: p_1 in (alpha / LOOKS, UPPER x alpha] is unclear


def first_look(model, key, x: torch.Tensor, recovery) -> dict:
    null = find_null(model.name, recovery.for_model(model.default_recovery), tuple(key.latent_shape))
    null = load_null(null) if null else None
    t0 = time.perf_counter()
    found = [d for i in range(0, len(x), 25) for d in detect(model, x[i : i + 25], [key], recovery, Decision(), null=null)]
    return {"p": np.array([d.p_value for d in found]), "seconds": time.perf_counter() - t0,
            "clipped": clipped_share(x).numpy()}


@torch.inference_mode()
def second_look(model, key, x: torch.Tensor, recovery, memory: int) -> dict:
    """p after each checkpoint of the attack-aware iteration from the first look's z_0, and the
    seconds spent iterating and inverting DDIM."""
    transforms = search_grid("all", key.latent_shape[-1])
    x_in, extra = prepare(model, x, recovery, method="attack_aware")
    z_0 = model.encode(x_in.to(model.device, model.dtype))
    kept = {}  # the callback sees z_k, the iterate after k iterations
    t0 = time.perf_counter()
    z_last, _ = attack_aware(model.encode, model.decode, x_in, z0=z_0, iters=max(CHECKPOINTS), memory=memory, **extra,
                             callback=lambda d: kept.update({d["i"]: d["z"].clone()}) if d["i"] in CHECKPOINTS else None)
    iterate = time.perf_counter() - t0
    kept[max(CHECKPOINTS)] = z_last
    t0 = time.perf_counter()
    p = {k: [m.p_value for m in match_keys(noise_from_latents(model, z, recovery), [key], transforms, None)]
         for k, z in kept.items()}
    return {"p": p, "iterate_seconds": iterate, "ddim_seconds": (time.perf_counter() - t0) / len(kept)}


def evaluate(res: dict) -> list[dict]:
    """Every rule x variant x iterations from the recorded p-values: TPR, share refined, seconds."""
    out = []
    t_first = np.mean([a["first"]["seconds"] / a["images"] for a in res["attacks"].values()])
    for variant in VARIANTS:
        cost = res["cost"][variant]  # per refined image
        for iters in CHECKPOINTS:
            for upper in UPPER:
                for use_edited in (True, False):
                    row = {"variant": variant, "iters": iters, "upper": upper, "edited_rule": use_edited, "attacks": {}}
                    for a, r in res["attacks"].items():
                        p1, second = np.array(r["first"]["p"]), r["second"][variant]
                        edited = np.array(r["first"]["clipped"]) > EDITED
                        weak = (p1 > ALPHA / WEAK_EVIDENCE) & (p1 <= ALPHA * upper)
                        again = weak | (use_edited & edited & (p1 > ALPHA / WEAK_EVIDENCE))
                        p2 = np.ones_like(p1)
                        idx = np.array(r["refined"], dtype=int)
                        p2[idx] = second["p"][str(iters)]
                        assert not (again & ~np.isin(np.arange(len(p1)), idx)).any()  # narrower than the run's rule
                        p = np.minimum(1, LOOKS * np.where(again, np.minimum(p1, p2), p1))
                        half = len(p) // 2
                        row["attacks"][a] = {"tpr_at_1pct_fpr": tpr_at_fpr(p[:half], p[half:]),
                                             "fpr_at_alpha": float(np.mean(p[half:] <= ALPHA)),
                                             "refined_share": float(again.mean())}
                    six = [a for a in ATTACKS if a != "none" and a in row["attacks"]]
                    row["mean_six_tpr_at_1pct_fpr"] = float(np.mean([row["attacks"][a]["tpr_at_1pct_fpr"] for a in six]))
                    share = row["attacks"]["none"]["refined_share"]
                    row["seconds_per_image_unattacked"] = float(t_first + share * (iters * cost["per_iteration"] + cost["ddim"]))
                    row["vs_encoder_unattacked"] = row["seconds_per_image_unattacked"] / res["encoder_seconds_per_image"]
                    out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--encoder-seconds", type=float, required=True,
                        help="the encoder-only seconds per image of measure.py's run, the ratio's denominator")
    parser.add_argument("-o", default=None)
    args = parser.parse_args()
    out = Path(args.o or Path(__file__).parent / f"study-{args.model}.json")
    model = get_model(args.model)
    key = make_key(model, seed=20261201)
    attacked, _ = attacked_images(model, key, args.n)
    recovery = Recovery("encoder", photometric=True).for_model(model.default_recovery)
    res = {"n": args.n, "model": args.model, "key": key.key_id, "commit": commit(), "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           "command": "python docs/bench/attack_aware/study.py " + " ".join(sys.argv[1:]),
           "encoder_seconds_per_image": args.encoder_seconds, "attacks": {}, "cost": {}}
    spent = {v: [0.0, 0.0, 0] for v in VARIANTS}  # iterate seconds, ddim seconds, refined images
    for a, (w, c) in attacked.items():
        x = torch.cat([w, c])
        first = first_look(model, key, x, recovery)
        edited = first["clipped"] > EDITED
        weak = (first["p"] > ALPHA / WEAK_EVIDENCE) & (first["p"] <= ALPHA * max(UPPER))
        refined = np.flatnonzero(weak | (edited & (first["p"] > ALPHA / WEAK_EVIDENCE)))
        row = {"images": len(x), "refined": refined.tolist(), "second": {},
               "first": {"p": first["p"].tolist(), "clipped": first["clipped"].tolist(), "seconds": first["seconds"]}}
        for variant, memory in VARIANTS.items():
            s = second_look(model, key, x[refined], recovery, memory) if len(refined) else {"p": {k: [] for k in CHECKPOINTS},
                                                                                              "iterate_seconds": 0, "ddim_seconds": 0}
            row["second"][variant] = {"p": {str(k): v for k, v in s["p"].items()}}
            spent[variant][0] += s["iterate_seconds"]
            spent[variant][1] += s["ddim_seconds"]
            spent[variant][2] += len(refined)
        res["attacks"][a] = row
        print(a, len(refined), "refined", flush=True)
    for v, (it, dd, n) in spent.items():
        res["cost"][v] = {"per_iteration": it / max(CHECKPOINTS) / max(n, 1), "ddim": dd / max(n, 1)}
    res["rules"] = evaluate(res)
    out.write_text(json.dumps(res, indent=1) + "\n")
    best = sorted(res["rules"], key=lambda r: -r["mean_six_tpr_at_1pct_fpr"])
    for r in best[:12] + [r for r in best if r["vs_encoder_unattacked"] <= 1.2][:12]:
        print({k: v for k, v in r.items() if k != "attacks"}, "brightness", r["attacks"]["brightness"]["tpr_at_1pct_fpr"])


if __name__ == "__main__":
    main()
