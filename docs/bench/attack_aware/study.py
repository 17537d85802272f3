"""Issue 26: which adaptive rule and which second look pay for their time? One run gives every
image's first-look p (the encoder on the photometrically corrected image, ``pipeline.detect``) and,
for every image the widest rule would send to a second look (the weak band up to max(UPPER) x alpha,
and every clipped image whose first p exceeds alpha / WEAK_EVIDENCE: the rule of ``adaptive`` before
ae084a6), the second look's p after 2, 3, 5 and 10 attack-aware iterations, as the forward step and
Anderson-mixed. Each (rule, variant, iterations) is then evaluated from the same numbers: TPR at
1 % FPR under Tree-Ring's six attacks, the share refined, and the seconds per image it implies from
the measured costs (first look per image; one iteration and one DDIM inversion per refined image).
Rules (``RULES``): "two looks" (clipped images refined, p = 2 min(p_1, p_2)), "weak band only", and
"clipped alone" (a clipped image's p is the second look's, uncorrected: ``adaptive`` from ae084a6).
The last is an estimate: a clipped image whose first p was at most alpha / WEAK_EVIDENCE got no
second look in the run and keeps p_1 (counted in ``estimated``).

    python docs/bench/attack_aware/study.py -n 100 --encoder-seconds 0.0597   # writes study-tiny.json
    python docs/bench/attack_aware/study.py --from docs/bench/attack_aware/study-tiny.json   # re-evaluates it

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
UPPER = (10.0, 5.0, 3.0, 2.0)  # the weak band's upper factor: p_1 in (alpha / WEAK_EVIDENCE, UPPER x alpha] is unclear
RULES = ("two looks", "weak band only", "clipped alone")


def first_look(model, key, x: torch.Tensor, recovery) -> dict:
    null = find_null(model.name, recovery.for_model(model.default_recovery).looks()["first"], tuple(key.latent_shape))
    null = load_null(null) if null else None
    t0 = time.perf_counter()
    found = [d for i in range(0, len(x), 25) for d in detect(model, x[i : i + 25], [key], recovery, Decision(), nulls={"first": null})]
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
                for rule in RULES:
                    row = {"variant": variant, "iters": iters, "upper": upper, "rule": rule, "attacks": {}}
                    for a, r in res["attacks"].items():
                        row["attacks"][a] = apply_rule(r, r["second"][variant]["p"][str(iters)], upper, rule)
                    six = [a for a in ATTACKS if a != "none" and a in row["attacks"]]
                    row["mean_six_tpr_at_1pct_fpr"] = float(np.mean([row["attacks"][a]["tpr_at_1pct_fpr"] for a in six]))
                    share = row["attacks"]["none"]["refined_share"]
                    row["seconds_per_image_unattacked"] = float(t_first + share * (iters * cost["per_iteration"] + cost["ddim"]))
                    row["vs_encoder_unattacked"] = row["seconds_per_image_unattacked"] / res["encoder_seconds_per_image"]
                    out.append(row)
    return out


def apply_rule(r: dict, second: list, upper: float, rule: str) -> dict:
    """One attack's TPR at 1 % FPR, FPR at alpha and share refined under ``rule`` (module docstring)."""
    p1 = np.array(r["first"]["p"])
    clipped = np.array(r["first"]["clipped"]) > EDITED
    seen = np.isin(np.arange(len(p1)), r["refined"])
    p2 = np.ones_like(p1)
    p2[np.array(r["refined"], dtype=int)] = second
    weak = (p1 > ALPHA / WEAK_EVIDENCE) & (p1 <= ALPHA * upper)
    if rule == "clipped alone":
        again = weak & ~clipped
        p = np.where(clipped, np.where(seen, p2, p1), np.minimum(1, LOOKS * np.where(again, np.minimum(p1, p2), p1)))
        refined = again | clipped
    else:
        again = weak | (clipped & (p1 > ALPHA / WEAK_EVIDENCE)) if rule == "two looks" else weak
        p = np.minimum(1, LOOKS * np.where(again, np.minimum(p1, p2), p1))
        refined = again
    assert not (again & ~seen).any()  # narrower than the run's rule
    half = len(p) // 2
    return {"tpr_at_1pct_fpr": tpr_at_fpr(p[:half], p[half:]), "fpr_at_alpha": float(np.mean(p[half:] <= ALPHA)),
            "refined_share": float(refined.mean()), "estimated": int((clipped & ~seen).sum()) if rule == "clipped alone" else 0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--encoder-seconds", type=float,
                        help="the encoder-only seconds per image of measure.py's run, the ratio's denominator")
    parser.add_argument("--from", dest="saved", help="re-evaluate the rules of a saved run instead of running")
    parser.add_argument("-o", default=None)
    args = parser.parse_args()
    out = Path(args.o or args.saved or Path(__file__).parent / f"study-{args.model}.json")
    if args.saved:
        res = json.loads(Path(args.saved).read_text())
        res["rules"] = evaluate(res)
        res.setdefault("evaluated_by", []).append("python docs/bench/attack_aware/study.py " + " ".join(sys.argv[1:]))
        out.write_text(json.dumps(res, indent=1) + "\n")
        return summary(res)
    if args.encoder_seconds is None:
        parser.error("--encoder-seconds is required for a run")
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
    summary(res)


def summary(res: dict) -> None:
    best = sorted(res["rules"], key=lambda r: -r["mean_six_tpr_at_1pct_fpr"])
    for r in best[:12] + [r for r in best if r["vs_encoder_unattacked"] <= 1.2][:12]:
        print({k: v for k, v in r.items() if k != "attacks"}, "brightness", r["attacks"]["brightness"])


if __name__ == "__main__":
    main()
