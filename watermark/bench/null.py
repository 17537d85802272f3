"""``ringmark bench null``: the false-positive rate of each key under ``verify``'s own rule
(``pipeline.detect``: its looks, the null model of each, the geometric search with mirrors, the
correction), with the model's null models and without (``--null none``), on clean images the
model generates (clean and after JPEG and blur) and on photographs.

For each key spec (``SPECS``: rand, Tree-Ring's ring on each channel, ringid) ``keys`` keys are
drawn; every clean image is tested against every key alone, as ``verify --keys KEY`` does. Per
key: the share of images with p <= alpha and the one-sided binomial p-value of "more than
alpha"; Holm's step-down across all keys says which keys are liberal at family level 0.01. The
looks do not depend on the key, so each image set's looks are taken once (``detect(taken=)``).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from ..io.images import to_pil, to_tensor
from ..io.nullfile import resolve_nulls
from ..models import get_model
from ..pipeline import Decision, Recovery, detect, take_looks
from ..scheme.geometry import DEFAULT_SEARCH
from ..scheme.keys import new_key
from .attacks import attack

SPECS = {"rand": dict(pattern="rand"), **{f"ring ch{c}": dict(pattern="ring", channels=(c,)) for c in range(4)},
         "ringid": dict(pattern="ringid")}
ALPHA = 0.01
TEST_SEED = 50_000  # the clean images' seeds, far from ``calibrate``'s (10**9 on)


def per_key_rates(model, x: torch.Tensor, recovery: Recovery, taken: dict, nulls: dict, n_keys: int,
                  search: str = DEFAULT_SEARCH, seed: int = 7, alpha: float = ALPHA) -> dict:
    """{spec: (rates (n_keys,), binomial p-values (n_keys,), images)}: each key's share of the
    images ``detect`` flags at ``alpha``, testing that key alone."""
    out = {}
    shape = model.latent_shape(x.shape[-1])
    decision = Decision(alpha=alpha, search=search)
    for name, spec in SPECS.items():
        if any(c >= shape[0] for c in spec.get("channels", ())):
            continue
        keys = [new_key(model.name, tuple(shape), seed=seed + 1000 * i, **spec) for i in range(n_keys)]
        k = np.array([sum(d.p_value <= alpha for d in detect(model, x, [key], recovery, decision, nulls=nulls,
                                                             taken=taken)) for key in keys])
        out[name] = (k / len(x), np.array([stats.binomtest(int(v), len(x), alpha, alternative="greater").pvalue
                                           for v in k]), len(x))
    return out


def holm(p_values: np.ndarray, level: float = 0.01) -> np.ndarray:
    """Holm's step-down: which hypotheses are rejected at family-wise ``level``."""
    order = np.argsort(p_values)
    reject = np.zeros(len(p_values), bool)
    for i, j in enumerate(order):
        if p_values[j] > level / (len(p_values) - i):
            break
        reject[j] = True
    return reject


def summarise(rates: dict) -> dict:
    """Per spec: mean and worst rate; over all keys: how many Holm rejects, the worst rate."""
    all_p = np.concatenate([p for _, p, _ in rates.values()])
    rejected = holm(all_p)
    rows = {name: {"mean": float(r.mean()), "worst": float(r.max())} for name, (r, _, _) in rates.items()}
    worst = max(rows.values(), key=lambda row: row["worst"])["worst"]
    n = next(iter(rates.values()))[2]
    # the worst of that many keys when every key is exact: the 95th percentile of the largest of
    # len(all_p) independent binomial(n, alpha) rates (simulated; a yardstick for "worst")
    exact = np.random.default_rng(0).binomial(n, ALPHA, (2000, len(all_p))).max(1) / n
    return {"per_spec": rows, "keys": len(all_p), "images": n, "holm_rejected": int(rejected.sum()), "worst": worst,
            "worst_if_exact_95pct": float(np.quantile(exact, 0.95))}


def photographs(n: int, size: int, seed: int) -> torch.Tensor | None:
    """``n`` random crops of scikit-image's held-out photograph and its training photographs, in
    [-1, 1]; None without the train extra."""
    try:
        from ..training.train import HELD_OUT, TRAIN_PHOTOS, load_photo, random_crops

        pics = [load_photo(name) for name in (HELD_OUT, *TRAIN_PHOTOS)]
    except ImportError:
        return None
    return random_crops(pics, n, size, torch.Generator().manual_seed(seed))


def clean_images(model, n: int, steps: int, seed: int = TEST_SEED, batch: int = 32) -> torch.Tensor:
    shape = model.latent_shape(model.default_size)
    out = []
    for i in range(0, n, batch):
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + j))
                         for j in range(i, min(n, i + batch))])
        out.append(model.generate(z, steps) * 2 - 1)
    return torch.cat(out)


def attacked(images: torch.Tensor, name: str) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return to_tensor([attack(im, name, rng) for im in to_pil((images + 1) / 2)])


def run(model_name: str = "tiny", n: int = 2048, n_keys: int = 50, steps: int = 10, photos: int = 512,
        search: str = DEFAULT_SEARCH, outdir: str = "docs/bench/null", log=print) -> dict:
    model = get_model(model_name)
    recovery = Recovery().for_model(model.default_recovery)
    shape = model.latent_shape(model.default_size)
    nulls = resolve_nulls("auto", model_name, recovery.looks(), shape)
    found = {role: n.meta.get("file") for role, n in nulls.items() if n is not None}
    if not found:
        log(f"model {model_name!r} has no null model for its looks: the rows with and without are the same rule")
    t0 = time.perf_counter()
    images = clean_images(model, n, steps)
    log(f"{n} clean images in {time.perf_counter() - t0:.0f}s")
    sets = {"clean": images, "jpeg": attacked(images, "jpeg"), "blur": attacked(images, "blur")}
    if photos:
        sets["photographs"] = photographs(photos, model.default_size, seed=7)
        if sets["photographs"] is None:
            del sets["photographs"]
            log("no photographs: they need the train extra (pip install 'ringmark[train]')")
    res = {"model": model_name, "null_models": found, "null_images": {r: nulls[r].n for r in found}, "images": n,
           "steps": steps, "keys_per_spec": n_keys, "alpha": ALPHA, "search": search,
           "rule": "pipeline.detect, verify's defaults", "sets": {}}
    for name, x in sets.items():
        x = (to_tensor(to_pil((x + 1) / 2)) if name in ("clean", "photographs") else x)  # 8 bits, as verify reads
        taken = take_looks(model, x, recovery)
        res["sets"][name] = {"n": len(x), "with_null": summarise(per_key_rates(model, x, recovery, taken, nulls,
                                                                               n_keys, search)),
                             "without": summarise(per_key_rates(model, x, recovery, taken, {}, n_keys, search))}
        log(f"{name}: {json.dumps(res['sets'][name])}")
    res.update(seconds=round(time.perf_counter() - t0, 1), machine=f"{platform.machine()}, {torch.get_num_threads()} "
               f"torch threads, torch {torch.__version__}", command="ringmark " + " ".join(sys.argv[1:]))
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{model_name}.json").write_text(json.dumps(res, indent=1) + "\n")
    log(markdown(res))
    return res


def markdown(res: dict) -> str:
    """The table of one run (BENCHMARKS.md): per image set, the worst key's rate and Holm's count, with
    and without the null model."""
    lines = [f"| `{res['model']}`: images | null model | mean rate | worst key (exact keys: 95 % below) | "
             "liberal keys (Holm) |", "|---|---|---|---|---|"]
    for name, row in res["sets"].items():
        for side, label in (("with_null", "yes"), ("without", "no")):
            r = row[side]
            mean = sum(v["mean"] for v in r["per_spec"].values()) / len(r["per_spec"])
            lines.append(f"| {name} ({row['n']}) | {label} | {mean:.2%} | {r['worst']:.2%} "
                         f"({r['worst_if_exact_95pct']:.2%}) | {r['holm_rejected']} of {r['keys']} |")
    return "\n".join(lines)
