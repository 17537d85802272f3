"""``ringmark bench detect``: Tree-Ring's robustness table (Table 1/2) and the seed paper's
identification table (Table 2), per decoder-inversion method, on the bundled model."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats

from . import api, bench_report
from .attacks import ATTACKS, attack
from .detect import score
from .embed import initial_noise
from .generate import decode_images, sample_latents
from inversion import invert_decoder

from .verify import DEFAULT_INVERSION, DEFAULT_ITERS, Recovery, invert_ddim, match_keys, recover_noise


def to_pil(images01: torch.Tensor) -> list[Image.Image]:
    a = (images01.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(x) for x in a]


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
                        for im in images]) / 127.5 - 1


def auc(wm: np.ndarray, clean: np.ndarray) -> float:
    """Area under the ROC of the score -log p (Mann-Whitney U / n1 n2; ties count half)."""
    s_wm, s_clean = -np.log(np.maximum(wm, 1e-300)), -np.log(np.maximum(clean, 1e-300))
    return float(stats.mannwhitneyu(s_wm, s_clean, alternative="greater").statistic / (len(wm) * len(clean)))


def tpr_at_fpr(wm: np.ndarray, clean: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at the empirical threshold that flags ``fpr`` of the clean images (at most)."""
    k = int(np.floor(fpr * len(clean)))
    threshold = np.sort(clean)[k - 1] if k >= 1 else np.min(clean) * (1 - 1e-12)
    return float(np.mean(wm <= threshold))


def make_images(model, key, seeds, steps, watermark=True):
    out = []
    for i in range(0, len(seeds), 16):
        z_T = initial_noise(key, seeds[i : i + 16], watermark)
        out.append(decode_images(model, sample_latents(model, z_T, steps)).cpu())
    return to_pil(torch.cat(out))


def p_values(model, images: list[Image.Image], keys, recovery: Recovery, batch: int = 8):
    """p-values (and picked key ids, for several keys) of ``images``, and the seconds per image."""
    ps, ids, t0 = [], [], time.perf_counter()
    for i in range(0, len(images), batch):
        z_T, _ = recover_noise(model, to_tensor(images[i : i + batch]), recovery)
        if len(keys) == 1:
            ps += [s.p_value for s in score(z_T, keys[0])]
        else:
            tests = match_keys(z_T, keys)
            ps += [t.p_value for t in tests]
            ids += [t.key_id for t in tests]
    return np.array(ps), ids, (time.perf_counter() - t0) / len(images)


def p_values_sweep(model, images: list[Image.Image], key, method: str, sweep, ddim_steps: int, batch: int = 8):
    """p-values after each iteration count in ``sweep``, from one run of ``method``: z_k is taken
    along the way (exact for methods without a schedule: fixed_point, inertial_km)."""
    ps = {k: [] for k in sweep}
    for i in range(0, len(images), batch):
        x = to_tensor(images[i : i + batch]).to(model.device, model.dtype)
        snaps = {}

        def keep(info):
            if info["i"] in ps:
                snaps[info["i"]] = info["z"].clone()

        z, _ = invert_decoder(method, model.encode, model.decode, x, iters=max(sweep), callback=keep)
        snaps[max(sweep)] = z
        z_T = invert_ddim(model, torch.cat([snaps[k] for k in sweep]), Recovery(method, max(sweep), ddim_steps))
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
    model = api.get_model("tiny", device)
    keys = [api.keygen(None, "tiny", seed=seed + j) for j in range(3)]  # the model's default key channel
    seeds = list(range(n))
    t0 = time.time()
    wm = make_images(model, keys[0], seeds, gen_steps)
    clean = make_images(model, keys[0], seeds, gen_steps, watermark=False)
    log(f"generated {n} watermarked + {n} clean images in {time.time() - t0:.0f}s")
    rng = np.random.default_rng(seed)
    attacked = {a: ([attack(im, a, rng) for im in wm], [attack(im, a, rng) for im in clean]) for a in attacks}

    def recovery(method, iters=None):
        if iters is None:
            iters = gradient_iters if method == "gradient" else DEFAULT_ITERS
        return Recovery(method, iters, ddim_steps)

    res: dict = {"n": n, "gen_steps": gen_steps, "ddim_steps": ddim_steps, "key_pattern": keys[0].pattern,
                 "key_radius": keys[0].radius, "key_channel": keys[0].channel, "batch": batch,
                 "machine": bench_report.machine(device), "date": time.strftime("%Y-%m-%d"),
                 "iters": {m: recovery(m).iters for m in methods}, "robustness": {}, "sweep": {},
                 "identification": {}}
    for method in methods:
        rows = {}
        for a in attacks:
            p_wm, _, sec = p_values(model, attacked[a][0], keys[:1], recovery(method), batch)
            p_clean, _, _ = p_values(model, attacked[a][1], keys[:1], recovery(method), batch)
            rows[a] = {"auc": auc(p_wm, p_clean), "tpr_at_1pct_fpr": tpr_at_fpr(p_wm, p_clean),
                       "tpr_at_alpha_0.01": float(np.mean(p_wm <= 0.01)),
                       "fpr_at_alpha_0.01": float(np.mean(p_clean <= 0.01)), "seconds_per_image": sec,
                       "p_wm": p_wm.tolist(), "p_clean": p_clean.tolist()}
            log(f"{method:12s} {a:10s} AUC {rows[a]['auc']:.3f} TPR@1%FPR {rows[a]['tpr_at_1pct_fpr']:.3f} "
                f"({sec:.2f}s/image)")
        rows["mean_attacked_auc"] = float(np.mean([rows[a]["auc"] for a in attacks if a != "none"] or [np.nan]))
        res["robustness"][method] = rows
        checkpoint(res)
    sweep = sorted(sweep)
    if sweep:
        per_attack = {a: (p_values_sweep(model, attacked[a][0], keys[0], "fixed_point", sweep, ddim_steps, batch),
                          p_values_sweep(model, attacked[a][1], keys[0], "fixed_point", sweep, ddim_steps, batch))
                      for a in attacks}
    for iters in sweep:
        rows = {a: {"auc": auc(wm_p[iters], clean_p[iters]), "tpr_at_1pct_fpr": tpr_at_fpr(wm_p[iters], clean_p[iters]),
                    "tpr_at_alpha_0.01": float(np.mean(wm_p[iters] <= 0.01))}
                for a, (wm_p, clean_p) in per_attack.items()}
        res["sweep"][str(iters)] = {"method": "fixed_point", "rows": rows, "mean_attacked_auc": float(
            np.mean([r["auc"] for a, r in rows.items() if a != "none"] or [np.nan]))}
        log(f"sweep fixed_point iters {iters}: mean attacked AUC {res['sweep'][str(iters)]['mean_attacked_auc']:.3f}")
    checkpoint(res)
    others = [make_images(model, keys[j], [10_000 * j + s for s in seeds], gen_steps) for j in (1, 2)]
    truth = [keys[0].key_id] * n + [keys[1].key_id] * n + [keys[2].key_id] * n
    for method in methods:
        _, ids, _ = p_values(model, wm + others[0] + others[1], keys, recovery(method), batch)
        res["identification"][method] = float(np.mean([a == b for a, b in zip(ids, truth)]))
        log(f"identification {method}: {res['identification'][method]:.3f}")
        checkpoint(res)
    with tempfile.TemporaryDirectory() as tmp:  # verify at its defaults on a folder, as a user would
        for i, im in enumerate(wm):
            im.save(Path(tmp) / f"{i:05d}.png")
        t1 = time.perf_counter()
        api.verify([tmp], keys[:1], device=device)
        res["verify_seconds_per_image_default"] = (time.perf_counter() - t1) / n
    log(f"verify at defaults: {res['verify_seconds_per_image_default']:.2f}s per image")
    return res


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
    plt = bench_report.pyplot()
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


def write_partial(res: dict, out: Path) -> Path:
    return bench_report.write_partial(res, out, "detect")


def write(res: dict, out: Path) -> list[Path]:
    return bench_report.write(res, out, "detect", markdown, plot_roc, "detect_roc.png")
