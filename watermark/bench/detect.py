"""``ringmark bench detect``: Tree-Ring's robustness table (Table 1/2) and the seed paper's
identification table (Table 2), per decoder-inversion method, on the bundled model."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats

from .. import api
from ..io.images import to_pil, to_tensor
from ..models import get_model
from ..pipeline import DEFAULT_ITERS, Recovery, detect, latents_from_images, make_key, noise_from_latents
from ..scheme.detection import score
from ..scheme.embedding import watermarked_latents
from . import report
from .attacks import ATTACKS, attack


def auc(wm: np.ndarray, clean: np.ndarray) -> float:
    """Area under the ROC of the score -log p (Mann-Whitney U / n1 n2; ties count half)."""
    s_wm, s_clean = -np.log(np.maximum(wm, 1e-300)), -np.log(np.maximum(clean, 1e-300))
    return float(stats.mannwhitneyu(s_wm, s_clean, alternative="greater").statistic / (len(wm) * len(clean)))


def tpr_at_fpr(wm: np.ndarray, clean: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at the empirical threshold that flags ``fpr`` of the clean images (at most)."""
    k = int(np.floor(fpr * len(clean)))
    threshold = np.sort(clean)[k - 1] if k >= 1 else np.min(clean) * (1 - 1e-12)
    return float(np.mean(wm <= threshold))


def make_images(model, key, seeds, steps, watermark=True) -> list[Image.Image]:
    out = []
    for i in range(0, len(seeds), 16):
        out.append(model.generate(watermarked_latents(key, seeds=seeds[i : i + 16], watermark=watermark), steps))
    return to_pil(torch.cat(out))


def p_values(model, images: list[Image.Image], keys, recovery: Recovery, batch: int = 8):
    """p-values (and picked key ids, for several keys) of ``images``, and the seconds per image."""
    ps, ids, t0 = [], [], time.perf_counter()
    for i in range(0, len(images), batch):
        found = detect(model, to_tensor(images[i : i + batch]), keys, recovery)
        ps += [d.raw_p_value if len(keys) == 1 else d.p_value for d in found]
        ids += [d.key_id for d in found] if len(keys) > 1 else []
    return np.array(ps), ids, (time.perf_counter() - t0) / len(images)


def p_values_sweep(model, images: list[Image.Image], key, method: str, sweep, ddim_steps: int, batch: int = 8):
    """p-values after each iteration count in ``sweep``, from one run of ``method``: z_k is taken
    along the way (exact for methods without a schedule: fixed_point, inertial_km)."""
    ps = {k: [] for k in sweep}
    recovery = Recovery(method, max(sweep), ddim_steps)
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch])
        snaps = {}

        def keep(info):
            if info["i"] in ps:
                snaps[info["i"]] = info["z"].clone()

        z, _ = latents_from_images(model, x, recovery, callback=keep)
        snaps[max(sweep)] = z
        z_T = noise_from_latents(model, torch.cat([snaps[k] for k in sweep]), recovery)
        for j, k in enumerate(sweep):
            ps[k] += [s.p_value for s in score(z_T[j * len(x) : (j + 1) * len(x)], key)]
    return {k: np.array(v) for k, v in ps.items()}


def run(n: int = 100, methods=("encoder", "gradient", "fixed_point", "adam"), attacks=ATTACKS,
        sweep=(5, 10, 20, 50, 100), gen_steps: int = 50, ddim_steps: int = 50, gradient_iters: int = 20,
        seed: int = 20241127, log=print, device: str = "cpu", batch: int = 8, checkpoint=None) -> dict:
    """The whole table; ``checkpoint(res)`` is called after each stage with what is done so far
    (a run stopped by a time limit keeps it)."""
    torch.set_grad_enabled(False)
    checkpoint = checkpoint or (lambda res: None)
    model = get_model("tiny", device)
    keys = [make_key(model, "tiny", seed=seed + j) for j in range(3)]  # the model's default key channel
    t0 = time.time()
    wm = make_images(model, keys[0], list(range(n)), gen_steps)
    clean = make_images(model, keys[0], list(range(n)), gen_steps, watermark=False)
    log(f"generated {n} watermarked + {n} clean images in {time.time() - t0:.0f}s")
    rng = np.random.default_rng(seed)
    attacked = {a: ([attack(im, a, rng) for im in wm], [attack(im, a, rng) for im in clean]) for a in attacks}

    def recovery(method, iters=None):
        if iters is None:
            iters = gradient_iters if method == "gradient" else DEFAULT_ITERS
        return Recovery(method, iters, ddim_steps)

    res: dict = {"n": n, "gen_steps": gen_steps, "ddim_steps": ddim_steps, "key_pattern": keys[0].pattern,
                 "key_radius": keys[0].radius, "key_channel": keys[0].channel, "batch": batch,
                 "machine": report.machine(device), "date": time.strftime("%Y-%m-%d"),
                 "iters": {m: recovery(m).iters for m in methods}, "robustness": {}, "sweep": {},
                 "identification": {}}
    for method in methods:
        res["robustness"][method] = robustness(model, attacked, keys[0], recovery(method), batch, log)
        checkpoint(res)
    res["sweep"] = iteration_sweep(model, attacked, keys[0], sorted(sweep), ddim_steps, batch, log)
    checkpoint(res)
    others = [make_images(model, keys[j], [10_000 * j + s for s in range(n)], gen_steps) for j in (1, 2)]
    truth = [k.key_id for k in keys for _ in range(n)]
    for method in methods:
        _, ids, _ = p_values(model, wm + others[0] + others[1], keys, recovery(method), batch)
        res["identification"][method] = float(np.mean([a == b for a, b in zip(ids, truth)]))
        log(f"identification {method}: {res['identification'][method]:.3f}")
        checkpoint(res)
    res["verify_seconds_per_image_default"] = verify_seconds(wm, keys[0], device)
    log(f"verify at defaults: {res['verify_seconds_per_image_default']:.2f}s per image")
    return res


def robustness(model, attacked: dict, key, recovery: Recovery, batch: int, log) -> dict:
    """AUC, TPR at 1% FPR, and the decision at alpha = 0.01, per attack, for one recovery."""
    rows = {}
    for a, (wm, clean) in attacked.items():
        p_wm, _, sec = p_values(model, wm, [key], recovery, batch)
        p_clean, _, _ = p_values(model, clean, [key], recovery, batch)
        rows[a] = {"auc": auc(p_wm, p_clean), "tpr_at_1pct_fpr": tpr_at_fpr(p_wm, p_clean),
                   "tpr_at_alpha_0.01": float(np.mean(p_wm <= 0.01)),
                   "fpr_at_alpha_0.01": float(np.mean(p_clean <= 0.01)), "seconds_per_image": sec,
                   "p_wm": p_wm.tolist(), "p_clean": p_clean.tolist()}
        log(f"{recovery.method:12s} {a:10s} AUC {rows[a]['auc']:.3f} TPR@1%FPR {rows[a]['tpr_at_1pct_fpr']:.3f} "
            f"({sec:.2f}s/image)")
    rows["mean_attacked_auc"] = float(np.mean([rows[a]["auc"] for a in attacked if a != "none"] or [np.nan]))
    return rows


def iteration_sweep(model, attacked: dict, key, sweep: list[int], ddim_steps: int, batch: int, log) -> dict:
    """The forward step's AUC per attack after each iteration count in ``sweep``, from one run."""
    if not sweep:
        return {}
    per_attack = {a: (p_values_sweep(model, wm, key, "fixed_point", sweep, ddim_steps, batch),
                      p_values_sweep(model, clean, key, "fixed_point", sweep, ddim_steps, batch))
                  for a, (wm, clean) in attacked.items()}
    out = {}
    for iters in sweep:
        rows = {a: {"auc": auc(wm_p[iters], clean_p[iters]), "tpr_at_1pct_fpr": tpr_at_fpr(wm_p[iters], clean_p[iters]),
                    "tpr_at_alpha_0.01": float(np.mean(wm_p[iters] <= 0.01))}
                for a, (wm_p, clean_p) in per_attack.items()}
        out[str(iters)] = {"method": "fixed_point", "rows": rows, "mean_attacked_auc": float(
            np.mean([r["auc"] for a, r in rows.items() if a != "none"] or [np.nan]))}
        log(f"sweep fixed_point iters {iters}: mean attacked AUC {out[str(iters)]['mean_attacked_auc']:.3f}")
    return out


def verify_seconds(images: list[Image.Image], key, device: str) -> float:
    """Seconds per image of ``api.verify`` at its defaults on a folder of ``images``, as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, im in enumerate(images):
            im.save(Path(tmp) / f"{i:05d}.png")
        t0 = time.perf_counter()
        api.verify([tmp], [key], device=device)
        return (time.perf_counter() - t0) / len(images)


def main(n: int, methods: list[str], sweep: list[int], gradient_iters: int, batch: int, device: str, quick: bool,
         outdir: Path, log) -> str:
    """``ringmark bench detect``: run, write detect.json/.md/_roc.png into ``outdir``, return the markdown."""
    steps = 50
    if quick:
        n, steps, sweep, gradient_iters = 4, 5, [1, 2], 2
    command = "ringmark bench detect " + " ".join(sys.argv[3:])
    dev = report.bench_device(device)
    out = Path(outdir)
    res = run(n, methods, sweep=sweep, gen_steps=steps, ddim_steps=steps, gradient_iters=gradient_iters, log=log,
              device=dev, batch=batch,
              checkpoint=lambda partial: report.write_partial({**partial, "command": command}, out, "detect"))
    res["command"] = command
    for f in report.write(res, out, "detect", markdown, plot_roc, "detect_roc.png"):
        log(f"wrote {f}")
    return markdown(res)


def paired_vs_encoder(res: dict) -> dict:
    """Per method and attack, the same watermarked images scored after this method and after the
    encoder alone: the share where this method's p-value is smaller, and the two-sided Wilcoxon
    signed-rank p of the paired -log p (scipy) - whether a refinement beats the encoder it starts from."""
    base = res["robustness"].get("encoder")
    out: dict = {}
    for method, rows in res["robustness"].items():
        if base is None or method == "encoder":
            continue
        out[method] = {}
        for a, row in rows.items():
            if not isinstance(row, dict):
                continue
            s_m, s_e = -np.log(np.maximum(row["p_wm"], 1e-300)), -np.log(np.maximum(base[a]["p_wm"], 1e-300))
            differs = s_m != s_e
            out[method][a] = {"share_smaller_p": float(np.mean(s_m > s_e)),
                              "wilcoxon_p": float(stats.wilcoxon(s_m, s_e).pvalue) if differs.sum() > 1 else 1.0}
    return out


def label(res: dict, method: str) -> str:
    return method if method == "encoder" else f"{method} ({res['iters'][method]} it.)"


def markdown(res: dict) -> str:
    attacks = [a for a in ATTACKS if a in next(iter(res["robustness"].values()))]
    lines = [f"N = {res['n']} watermarked + {res['n']} clean, generation {res['gen_steps']} DDIM steps, "
             f"inversion {res['ddim_steps']} DDIM steps; key {res['key_pattern']} r={res['key_radius']} "
             f"channel {res['key_channel']}; "
             f"{res['machine']}; {res['date']}", "",
             "| method | " + " | ".join(attacks) + " | mean attacked | s/image | 3-key accuracy |",
             "|---" * (len(attacks) + 4) + "|"]
    for method, rows in res["robustness"].items():
        cells = [f"{rows[a]['auc']:.3f} / {rows[a]['tpr_at_1pct_fpr']:.2f}" for a in attacks]
        lines.append(f"| {label(res, method)} | " + " | ".join(cells)
                     + f" | {rows['mean_attacked_auc']:.3f} | {rows['none']['seconds_per_image']:.2f} | "
                     + f"{res['identification'].get(method, float('nan')):.3f} |")
    lines += ["", "Cells: AUC / TPR at 1% FPR (empirical threshold from the clean images).", ""]
    paired = paired_vs_encoder(res)
    if paired:
        lines += ["| against the encoder alone | " + " | ".join(attacks) + " |", "|---" * (len(attacks) + 1) + "|"]
        for method, rows in paired.items():
            cells = [f"{rows[a]['share_smaller_p']:.2f} ({rows[a]['wilcoxon_p']:.1g})" for a in attacks]
            lines.append(f"| {label(res, method)} | " + " | ".join(cells) + " |")
        lines += ["", "Paired cells: share of the watermarked images whose p-value is smaller after this method "
                  "than after the encoder alone (Wilcoxon signed-rank p of the paired -log p).", ""]
    if res["sweep"]:
        lines += ["| iterations | " + " | ".join(attacks) + " | mean attacked |", "|---" * (len(attacks) + 2) + "|"]
        for iters, row in res["sweep"].items():
            cells = [f"{row['rows'][a]['auc']:.3f} / {row['rows'][a]['tpr_at_alpha_0.01']:.2f}" for a in attacks]
            lines.append(f"| {row['method']} {iters} | " + " | ".join(cells) + f" | {row['mean_attacked_auc']:.3f} |")
        lines += ["", "Sweep cells: AUC / TPR at p <= 0.01 (the decision at the default alpha)."]
    lines += ["", f"verify at its defaults, a folder of {res['n']} images: "
              f"{res['verify_seconds_per_image_default']:.2f} s per image"]
    return "\n".join(lines) + "\n"


def plot_roc(res: dict, path: Path) -> bool:
    plt = report.pyplot()
    if plt is None:
        return False
    methods = list(res["robustness"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for a, row in res["robustness"][method].items():
            if not isinstance(row, dict):
                continue
            s_wm = -np.log(np.maximum(row["p_wm"], 1e-300))
            s_clean = -np.log(np.maximum(row["p_clean"], 1e-300))
            thresholds = np.sort(np.concatenate([s_wm, s_clean, [np.inf]]))[::-1]
            tpr = [np.mean(s_wm >= t) for t in thresholds]
            fpr = [np.mean(s_clean >= t) for t in thresholds]
            ax.plot(fpr, tpr, label=f"{a} ({row['auc']:.3f})")
        ax.set(title=label(res, method), xlabel="FPR", ylabel="TPR", xscale="symlog",
               xlim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
