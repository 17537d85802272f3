"""``ringmark bench detect --study``: which decoder inversion pays in detection, on one model.

Each recovery (the encoder, the forward step, inertial KM, the paper's Adam recipe, Adam through
the decoder; 10/20/50 iterations where they iterate) recovers z_T of the same images, under no
attack and Tree-Ring's six, and is scored three ways:

1. ringmark's test: image i carries key i of a keyring (``rand`` keys); its p-value for key i
   after the geometric search, against clean images of the same seeds: AUC, TPR at 1 % FPR
   (empirical threshold) and at alpha = 0.001 (the calibrated threshold: 0.1 % FPR when the
   p-values are exact; the clean images' rate at it is reported beside), and identification
   among the whole keyring (``match_keys``, as ``verify`` runs it).
2. The seed paper's protocol (Hong et al., NeurIPS 2024, Table 2): three Tree-Ring ``ring`` keys
   on the model's key channel, image i carries key i mod 3, classified by the smallest Tree-Ring
   distance; accuracy, and the margin (the nearest wrong key's distance minus the right one's).
3. Paired against the encoder on the same images: Wilcoxon signed-rank on -log p of the
   watermarked images and McNemar's exact test on the 3-key classification, per attack; pooled
   over the six attacks with the image as the unit (``paired``).

The seconds per image are the recovery's wall time (decoder inversion + DDIM inversion) on the
machine of the run, batch ``batch``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from scipy import stats

from inversion import invert_decoder

from ..io.images import to_tensor
from ..models import get_model
from ..pipeline import noise_from_latents, Recovery
from ..scheme.correction import Correction
from ..scheme.detection import match_keys, score, statistics
from ..scheme.geometry import DEFAULT_SEARCH, search_grid, undo
from . import report
from .attacks import ATTACKS, attack
from .detect import auc, make_images, make_keys, tpr_at_fpr

ALPHA = 0.01
STRICT_ALPHA = 0.001
# Step sizes, for scaled (unit-variance) latents: the forward step and inertial KM at their
# defaults, the paper's Adam recipe (lr 0.01, warm-up + cosine), and Adam through the decoder at
# lr 0.01, constant: the better gradient setting `ringmark bench inversion` measured (BENCHMARKS.md).
SETTINGS = {"encoder": {}, "fixed_point": {"rho": 0.5}, "inertial_km": {}, "adam": {"lr": 0.01},
            "gradient": {"lr": 0.01, "schedule": "constant"}}
DEFAULT_RECOVERIES = ("encoder",) + tuple(f"{m}:{k}" for m in ("fixed_point", "inertial_km", "adam", "gradient")
                                          for k in (10, 20, 50))


def parse_recovery(spec: str) -> tuple[str, int]:
    """'encoder' or 'METHOD:ITERS' -> (method, iterations)."""
    method, _, iters = spec.partition(":")
    if method not in SETTINGS:
        raise ValueError(f"recovery must be one of {sorted(SETTINGS)} (with :ITERS), got {spec!r}")
    if method == "encoder":
        if iters:
            raise ValueError(f"the encoder takes no iterations, got {spec!r}")
        return method, 0
    if not iters.isdigit() or int(iters) < 1:
        raise ValueError(f"{method} needs a positive iteration count, e.g. {method}:20, got {spec!r}")
    return method, int(iters)


def recover(model, images, method: str, iters: int, ddim_steps: int, batch: int) -> tuple[torch.Tensor, float]:
    """z_T of each image by (method, iters) + ``ddim_steps`` DDIM steps, and the seconds per image."""
    out, t0 = [], time.perf_counter()
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(model.device, model.dtype)
        with torch.inference_mode():
            z_0, _ = invert_decoder(method, model.encode, model.decode, x, iters=iters, **SETTINGS[method])
            out.append(noise_from_latents(model, z_0, Recovery(method, iters, ddim_steps)))
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), (time.perf_counter() - t0) / len(images)


def three_keys(z_T: torch.Tensor, ring_keys, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's protocol: (correct, margin) per image, by Tree-Ring's smallest distance."""
    d = np.array([[s.distance for s in score(z_T, k)] for k in ring_keys]).T  # (n, 3)
    right = d[np.arange(len(d)), truth]
    wrong = np.where(np.arange(d.shape[1])[None] == truth[:, None], np.inf, d).min(1)
    return d.argmin(1) == truth, wrong - right


def own_and_foreign(z_T: torch.Tensor, keys: list, search: str, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """For image i: the p of key i and of key i+1 (a foreign key tested alone), each the best over
    the search's transforms, corrected for them: ``detect``'s test of one look without a null
    model (none is made for the recoveries this study compares), in one product per batch."""
    transforms = search_grid(search, z_T.shape[-1])
    own, foreign = [], []
    for i in range(0, len(z_T), batch):
        idx = list(range(i, min(i + batch, len(z_T))))
        group = [keys[j % len(keys)] for j in idx] + [keys[(j + 1) % len(keys)] for j in idx]
        t, df = statistics(undo(z_T[i : i + batch], transforms), group)  # (b, T, 2b)
        best = t.max(1).values.numpy()
        own += [stats.t.sf(best[r, r], df) for r in range(len(idx))]
        foreign += [stats.t.sf(best[r, len(idx) + r], df) for r in range(len(idx))]
    correction = Correction(keys=1, transforms=len(transforms), looks=1)
    return np.array([correction.p(p) for p in own]), np.array([correction.p(p) for p in foreign])


def identify(z_T: torch.Tensor, keyring: list, search: str, batch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the index of the best key of ``keyring`` and its corrected p-value."""
    index = {k.key_id: i for i, k in enumerate(keyring)}
    transforms = search_grid(search, z_T.shape[-1])
    found = [m for i in range(0, len(z_T), batch) for m in match_keys(z_T[i : i + batch], keyring, transforms)]
    return np.array([index[m.key_id] for m in found]), np.array([m.p_value for m in found])


def run_study(model_name: str = "tiny", n: int = 100, recoveries=DEFAULT_RECOVERIES, attacks=ATTACKS,
              n_keys: int = 2048, ddim_steps: int = 10, search: str = DEFAULT_SEARCH, gen_steps: int = 50,
              batch: int = 16, device: str = "cpu", seed: int = 20241127, log=print, checkpoint=None) -> dict:
    checkpoint = checkpoint or (lambda res: None)
    parsed = [parse_recovery(r) for r in recoveries]
    model = get_model(model_name, device)
    keyring = make_keys(model, max(n_keys, n), seed)
    ring_keys = make_keys(model, 3, seed + 104729, pattern="ring", channels=(model.default_key_channel,))
    t0 = time.time()
    wm = make_images(model, keyring[:n], list(range(n)), gen_steps, batch=batch)
    clean = make_images(model, keyring[:n], list(range(n)), gen_steps, watermark=False, batch=batch)
    truth3 = np.arange(n) % 3
    paper = make_images(model, [ring_keys[t] for t in truth3], list(range(n, 2 * n)), gen_steps, batch=batch)
    log(f"{model_name}: generated {n} watermarked, {n} clean and {n} three-key images in {time.time() - t0:.0f}s")
    rng = np.random.default_rng(seed)
    sets = {a: [[attack(im, a, rng) for im in images] for images in (wm, clean, paper)] for a in attacks}
    res: dict = {"model": model_name, "n": n, "keys": len(keyring), "ddim_steps": ddim_steps, "search": search,
                 "gen_steps": gen_steps, "alpha": ALPHA, "strict_alpha": STRICT_ALPHA, "settings": SETTINGS,
                 "ring_keys": {"pattern": "ring", "channel": model.default_key_channel, "radius": ring_keys[0].radius},
                 "batch": batch, "machine": report.machine(device), "date": time.strftime("%Y-%m-%d"),
                 "recoveries": {}}
    for method, iters in parsed:
        label = method if method == "encoder" else f"{method}:{iters}"
        row: dict = {"method": method, "iters": iters, "attacks": {}}
        seconds = []
        for a, (w, c, p3) in sets.items():
            (z_w, s_w), (z_c, s_c), (z_3, s_3) = (recover(model, im, method, iters=iters, ddim_steps=ddim_steps, batch=batch)
                                                  for im in (w, c, p3))
            seconds.append((s_w + s_c + s_3) / 3)
            p_w, _ = own_and_foreign(z_w, keyring[:n], search)
            p_c, _ = own_and_foreign(z_c, keyring[:n], search)
            best, p_best = identify(z_w, keyring, search)
            correct, margin = three_keys(z_3, ring_keys, truth3)
            row["attacks"][a] = {
                "auc": auc(p_w, p_c), "tpr_at_1pct_fpr": tpr_at_fpr(p_w, p_c, 0.01),
                "tpr_at_alpha": float(np.mean(p_w <= ALPHA)), "fpr_at_alpha": float(np.mean(p_c <= ALPHA)),
                "tpr_at_strict_alpha": float(np.mean(p_w <= STRICT_ALPHA)),
                "fpr_at_strict_alpha": float(np.mean(p_c <= STRICT_ALPHA)),
                "identified": float(np.mean((best == np.arange(n)) & (p_best <= ALPHA))),
                "three_key_accuracy": float(np.mean(correct)),
                "p_wm": p_w.tolist(), "p_clean": p_c.tolist(), "three_key_correct": correct.tolist(),
                "three_key_margin": margin.tolist()}
        row["seconds_per_image"] = float(np.mean(seconds))
        attacked = [a for a in attacks if a != "none"] or list(attacks)
        for name in ("auc", "tpr_at_1pct_fpr", "tpr_at_alpha", "tpr_at_strict_alpha", "identified",
                     "three_key_accuracy"):
            row[f"mean_attacked_{name}"] = float(np.mean([row["attacks"][a][name] for a in attacked]))
        res["recoveries"][label] = row
        clean_row = row["attacks"].get("none", next(iter(row["attacks"].values())))
        log(f"{model_name} {label}: {row['seconds_per_image']:.3f}s/image; clean TPR@0.1% "
            f"{clean_row['tpr_at_strict_alpha']:.2f}, 3-key {clean_row['three_key_accuracy']:.2f}; mean attacked "
            f"AUC {row['mean_attacked_auc']:.3f} TPR@1%FPR {row['mean_attacked_tpr_at_1pct_fpr']:.3f} "
            f"identified {row['mean_attacked_identified']:.3f} 3-key {row['mean_attacked_three_key_accuracy']:.3f}")
        checkpoint(res)
    res["paired"] = paired(res["recoveries"], attacks)
    return res


def paired(rows: dict, attacks) -> dict:
    """Each recovery against the encoder on the same images. Per attack: Wilcoxon signed-rank on
    -log p of the watermarked images (two-sided; ``median_gain`` > 0: the recovery gives smaller
    p), McNemar's exact test on the 3-key classification (``b``: right only with the recovery,
    ``c``: right only with the encoder) and Wilcoxon on its margin. Pooled over the attacked
    conditions ("attacked"), the unit is the image (its six attacked versions are not independent):
    Wilcoxon on each image's mean -log p gain, and on each image's count of right 3-key answers
    with the recovery minus with the encoder."""
    if "encoder" not in rows:
        return {}
    base = rows["encoder"]
    attacked = [a for a in attacks if a != "none"] or list(attacks)

    def per_image(row, field, names):  # (conditions, images)
        values = np.array([row["attacks"][a][field] for a in names], dtype=float)
        return -np.log(np.maximum(values, 1e-300)) if field == "p_wm" else values

    out = {}
    for label, row in rows.items():
        if label == "encoder":
            continue
        cmp: dict = {}
        for group, names in [(a, [a]) for a in attacks] + [("attacked", attacked)]:
            gain = (per_image(row, "p_wm", names) - per_image(base, "p_wm", names)).mean(0)
            ok, ok0 = per_image(row, "three_key_correct", names), per_image(base, "three_key_correct", names)
            margin = (per_image(row, "three_key_margin", names) - per_image(base, "three_key_margin", names)).mean(0)
            b, c = int(np.sum((ok == 1) & (ok0 == 0))), int(np.sum((ok == 0) & (ok0 == 1)))
            if len(names) == 1:
                three_key_p = float(stats.binomtest(b, b + c).pvalue) if b + c else 1.0
            else:
                three_key_p = _wilcoxon(ok.sum(0) - ok0.sum(0))
            cmp[group] = {"median_gain_neg_log_p": float(np.median(gain)), "wilcoxon_p": _wilcoxon(gain),
                          "three_key_b": b, "three_key_c": c, "three_key_p": three_key_p,
                          "margin_median_gain": float(np.median(margin)), "margin_wilcoxon_p": _wilcoxon(margin)}
        out[label] = cmp
    return out


def _wilcoxon(diff: np.ndarray) -> float:
    diff = diff[np.isfinite(diff)]
    if not np.any(diff != 0):
        return 1.0
    return float(stats.wilcoxon(diff).pvalue)


def markdown(res: dict) -> str:
    attacks = [a for a in ATTACKS if a in next(iter(res["recoveries"].values()))["attacks"]]
    lines = [f"Model `{res['model']}`; N = {res['n']} watermarked (image i carries key i of a {res['keys']}-key "
             f"`rand` keyring) + {res['n']} clean + {res['n']} three-key images per condition; recovery + "
             f"{res['ddim_steps']} DDIM steps; search '{res['search']}'; {res['machine']}; {res['date']}", "",
             "| recovery | s/image | clean AUC / TPR@1% / TPR@0.1% (FPR there) | mean attacked AUC / TPR@1% / "
             "TPR@0.1% | identified among keys, clean / attacked | 3-key accuracy, clean / attacked |",
             "|---|---|---|---|---|---|"]
    for label, r in res["recoveries"].items():
        c = r["attacks"].get("none", next(iter(r["attacks"].values())))
        lines.append(f"| {label} | {r['seconds_per_image']:.3f} | {c['auc']:.3f} / {c['tpr_at_1pct_fpr']:.2f} / "
                     f"{c['tpr_at_strict_alpha']:.2f} ({c['fpr_at_strict_alpha']:.2f}) | {r['mean_attacked_auc']:.3f} / "
                     f"{r['mean_attacked_tpr_at_1pct_fpr']:.3f} / {r['mean_attacked_tpr_at_strict_alpha']:.3f} | "
                     f"{c['identified']:.2f} / {r['mean_attacked_identified']:.3f} | {c['three_key_accuracy']:.2f} / "
                     f"{r['mean_attacked_three_key_accuracy']:.3f} |")
    lines += ["", "TPR@1%: at the empirical threshold of the clean images; TPR@0.1%: at p <= 0.001 (the calibrated "
              "threshold), with the clean images' rate there in brackets. Identified: the best of all keys is the "
              "right one and p <= 0.01 after the correction for every key and transform.", "",
              "| recovery | TPR per attack at 1% FPR: " + " / ".join(attacks) + " |", "|---|---|"]
    for label, r in res["recoveries"].items():
        lines.append(f"| {label} | " + " / ".join(f"{r['attacks'][a]['tpr_at_1pct_fpr']:.2f}" for a in attacks) + " |")
    if res.get("paired"):
        lines += ["", "Paired against the encoder, same images: Wilcoxon on -log p of the watermarked images "
                  "(attacked: on each image's mean gain over the six attacks); 3-key classification, b = right "
                  "only with the recovery, c = only with the encoder, McNemar's exact test (attacked: Wilcoxon on "
                  "each image's count of right answers, recovery minus encoder):", "",
                  "| recovery | clean: median gain -log p, p | attacked: median gain, p | 3-key clean b/c, p | "
                  "3-key attacked b/c, p |", "|---|---|---|---|---|"]
        for label, cmp in res["paired"].items():
            c, a = cmp.get("none", cmp["attacked"]), cmp["attacked"]
            lines.append(f"| {label} | {c['median_gain_neg_log_p']:+.2f}, {c['wilcoxon_p']:.2g} | "
                         f"{a['median_gain_neg_log_p']:+.2f}, {a['wilcoxon_p']:.2g} | {c['three_key_b']}/"
                         f"{c['three_key_c']}, {c['three_key_p']:.2g} | {a['three_key_b']}/{a['three_key_c']}, "
                         f"{a['three_key_p']:.2g} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path) -> bool:
    """Mean attacked TPR at 1 % FPR and mean attacked 3-key accuracy against seconds per image
    (clean images sit at the ceiling for every method: the tables say so)."""
    plt = report.pyplot()
    if plt is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    methods = sorted({r["method"] for r in res["recoveries"].values()}, key=list(SETTINGS).index)
    for method in methods:
        rows = sorted((r for r in res["recoveries"].values() if r["method"] == method), key=lambda r: r["iters"])
        t = [r["seconds_per_image"] for r in rows]
        for ax, y in zip(axes, ([r["mean_attacked_tpr_at_1pct_fpr"] for r in rows],
                                [r["mean_attacked_three_key_accuracy"] for r in rows])):
            ax.plot(t, y, marker="o", label=method)
            for r, ti, yi in zip(rows, t, y):
                ax.annotate(str(r["iters"]), (ti, yi), fontsize=7)
    axes[0].set(xlabel="seconds per image", ylabel="mean attacked TPR at 1% FPR", xscale="log",
                title=f"{res['model']}: six attacks (labels: iterations)")
    axes[1].set(xlabel="seconds per image", ylabel="3-key accuracy, mean of the six attacks", xscale="log",
                title="the paper's 3 ring keys")
    for ax in axes:
        ax.xaxis.set_minor_formatter(plt.NullFormatter())  # log-axis minor labels overlap at this width
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main(model_name: str, n: int, n_keys: int, recoveries, search: str, batch: int, device: str, quick: bool,
         outdir, log) -> str:
    """``ringmark bench detect --study``: run, write study.json/.md/_tpr_time.png into ``outdir``."""
    import sys
    from pathlib import Path

    recoveries = list(recoveries or DEFAULT_RECOVERIES)
    for r in recoveries:
        parse_recovery(r)  # refuse a bad list before any image is made
    gen_steps, ddim_steps = 50, 10
    if quick:
        n, n_keys, gen_steps, ddim_steps = 4, 16, 5, 2
        recoveries = [r for r in recoveries if r == "encoder" or r.endswith(":10")]
        recoveries = ["encoder"] + [r.replace(":10", ":2") for r in recoveries if r != "encoder"]
    command = "ringmark bench detect " + " ".join(sys.argv[3:])
    out = Path(outdir)
    res = run_study(model_name, n, recoveries, n_keys=n_keys, ddim_steps=ddim_steps, search=search,
                    gen_steps=gen_steps, batch=batch, device=report.bench_device(device), log=log,
                    checkpoint=lambda partial: report.write_partial({**partial, "command": command}, out, "study"))
    res["command"] = command
    for f in report.write(res, out, stem="study", markdown=markdown, plot=plot, plot_name="study_tpr_time.png"):
        log(f"wrote {f}")
    return markdown(res)
