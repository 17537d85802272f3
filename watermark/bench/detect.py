"""``ringmark bench detect``: robustness to Tree-Ring's attacks (AUC and TPR at 1% FPR),
identification among a keyring of many keys, the key patterns compared, the geometric search's
gain and cost, and the verify-time / TPR trade-off of DDIM steps x decoder iterations.

Image i of the watermarked set carries key i of the keyring; clean image i has the same seed and
no key and is tested against key i. Every p-value is ``verify``'s: ``pipeline.detect`` with the
model's looks and the null model of each (``io.nullfile.resolve_nulls``), the search and the
correction. Each look is taken once per attacked image (``looks_at``; the edited-image look where
an image is edited) and given to ``detect`` for every key (``detect(taken=)``); which look decides
is ``detect``'s rule. The sweep of recovery settings tests their first look alone, without a null
model (none is made for those settings).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import stats

from inversion import ITERATIVE

from .. import api
from ..io.images import to_pil, to_tensor
from ..io.nullfile import resolve_nulls
from ..models import get_model
from ..adaptive import EDITED, clipped_share
from ..pipeline import Decision, Look, Recovery, detect, latents_from_images, noise_from_latents, take_looks
from ..recovery import InversionRecord
from ..scheme.embedding import watermarked_latents
from ..scheme.geometry import DEFAULT_SEARCH, search_grid
from ..scheme.keys import Key, new_key
from . import report
from .attacks import ATTACKS, attack

ALPHA = 0.01
PATTERNS = {"rand r7 (default)": dict(pattern="rand"), "rand r5": dict(pattern="rand", radius=5),
            "ringid r7": dict(pattern="ringid"), "ring 4ch r5": dict(pattern="ring", radius=5),
            "ring ch0 r5 (Tree-Ring)": dict(pattern="ring", radius=5, channels=(0,))}
PREVIOUS = dict(recovery=Recovery("fixed_point", 10, 50), search="none", key=dict(pattern="ring", radius=5,
                                                                                   channels=(0,)))


def auc(wm: np.ndarray, clean: np.ndarray) -> float:
    """Area under the ROC of the score -log p (Mann-Whitney U / n1 n2; ties count half)."""
    s_wm, s_clean = -np.log(np.maximum(wm, 1e-300)), -np.log(np.maximum(clean, 1e-300))
    return float(stats.mannwhitneyu(s_wm, s_clean, alternative="greater").statistic / (len(wm) * len(clean)))


def tpr_at_fpr(wm: np.ndarray, clean: np.ndarray, fpr: float = 0.01) -> float:
    """TPR at the empirical threshold that flags ``fpr`` of the clean images (at most)."""
    k = int(np.floor(fpr * len(clean)))
    threshold = np.sort(clean)[k - 1] if k >= 1 else np.min(clean) * (1 - 1e-12)
    return float(np.mean(wm <= threshold))


def make_keys(model, n: int, seed: int, **kw) -> list[Key]:
    shape = model.latent_shape(model.default_size)
    return [new_key(model.name, shape, seed=seed + i, **kw) for i in range(n)]


def make_images(model, keys: list[Key], seeds, steps: int, watermark: bool = True,
                batch: int = 16) -> list[Image.Image]:
    """Image i from seed i, carrying keys[i] (``watermark=False``: the same noise, clean)."""
    out = []
    for i in range(0, len(seeds), batch):
        z = torch.cat([watermarked_latents(k, seeds=[s], watermark=watermark)
                       for k, s in zip(keys[i : i + batch], seeds[i : i + batch])])
        out.append(model.generate(z, steps))
    return to_pil(torch.cat(out))


def looks_at(model, images: list[Image.Image], recovery: Recovery, batch: int) -> tuple[dict, float]:
    """Every look ``recovery`` may take at each image (by role: the edited-image look only where
    an image is edited), taken once for all the keys tested on them; and the seconds per image of
    the first look."""
    x = to_tensor(images)
    t0 = time.perf_counter()
    looks = take_looks(model, x, recovery, roles=("first",), batch=batch)
    seconds = (time.perf_counter() - t0) / len(images)
    roles = ("second", "edited") if bool((clipped_share(x) > EDITED).any()) else ("second",)
    return {**looks, **take_looks(model, x, recovery, roles=roles, batch=batch, first=looks["first"])}, seconds


class Verdicts:
    """``verify``'s p-values for images whose first look is taken: ``detect`` with the model's null
    models, at ``search``."""

    def __init__(self, model, recovery: Recovery, nulls: dict, search: str):
        self.model, self.recovery, self.nulls = model, recovery, nulls
        self.decision = Decision(alpha=ALPHA, search=search)

    def p(self, x: torch.Tensor, looks: dict, keys: list[Key], idx: list[int]) -> list:
        """The Detection of each image ``idx`` of x (B, 3, H, W) tested against ``keys``; ``looks``:
        those taken at every image of x (``looks_at``)."""
        return detect(self.model, x[idx], keys, self.recovery, self.decision, nulls=self.nulls,
                      taken={role: look.rows(idx) for role, look in looks.items()})

    def own_and_foreign(self, x: torch.Tensor, looks: dict, keys: list[Key]):
        """For image i: the p of key i and the p of key i+1 (a foreign key tested alone)."""
        own = [self.p(x, looks, [keys[i]], [i])[0].p_value for i in range(len(x))]
        foreign = [self.p(x, looks, [keys[(i + 1) % len(keys)]], [i])[0].p_value for i in range(len(x))]
        return np.array(own), np.array(foreign)

    def identify(self, x: torch.Tensor, looks: dict, keyring: list[Key], batch: int = 4):
        """For each image, the index of the best key of ``keyring`` and its corrected p-value."""
        index = {k.key_id: i for i, k in enumerate(keyring)}
        found = [d for i in range(0, len(x), batch)
                 for d in self.p(x, looks, keyring, list(range(i, min(i + batch, len(x)))))]
        return np.array([index[d.key_id] for d in found]), np.array([d.p_value for d in found])


def rows_for(p_wm: dict, p_clean: dict, attacks) -> dict:
    """Per attack: AUC, TPR at 1% FPR, TPR and FPR at alpha; then their means over the attacks."""
    rows = {a: {"auc": auc(p_wm[a], p_clean[a]), "tpr_at_1pct_fpr": tpr_at_fpr(p_wm[a], p_clean[a]),
                "tpr_at_alpha": float(np.mean(p_wm[a] <= ALPHA)), "fpr_at_alpha": float(np.mean(p_clean[a] <= ALPHA)),
                "p_wm": p_wm[a].tolist(), "p_clean": p_clean[a].tolist()} for a in attacks}
    attacked = [a for a in attacks if a != "none"] or list(attacks)
    for name in ("auc", "tpr_at_1pct_fpr", "tpr_at_alpha"):
        rows[f"mean_attacked_{name}"] = float(np.mean([rows[a][name] for a in attacked]))
    return rows


@torch.no_grad()  # restores the caller's grad mode
def run(n: int = 100, n_keys: int = 2048, attacks=ATTACKS, recovery: Recovery = Recovery(),
        search: str = DEFAULT_SEARCH, patterns: dict | None = None, pattern_n: int = 48, sweep_n: int = 24,
        sweep_iters=(0, 2, 5, 10), sweep_steps=(1, 2, 5, 10, 20, 50), gen_steps: int = 50, seed: int = 20241127,
        first_image: int = 0, batch: int = 8, device: str = "cpu", verify_n: int = 32, log=print,
        checkpoint=None) -> dict:
    """The four tables of ``markdown``, each a step below: robustness and identification (one z_T
    per image), the key patterns, the sweep of decoder iterations x DDIM steps, and verify's time.
    ``checkpoint(res)`` after each, so a stopped run keeps what it measured."""
    checkpoint = checkpoint or (lambda res: None)
    model = get_model("tiny", device)
    recovery = recovery.for_model(model.default_recovery)  # the settings the report names
    nulls = resolve_nulls("auto", model.name, recovery.looks(), model.latent_shape(model.default_size))
    keyring = make_keys(model, max(n_keys, n), seed)
    t0 = time.time()
    seeds = list(range(first_image, first_image + n))
    wm = make_images(model, keyring[:n], seeds, gen_steps)
    clean = make_images(model, keyring[:n], seeds, gen_steps, watermark=False)
    log(f"generated {n} watermarked + {n} clean images in {time.time() - t0:.0f}s")
    rng = np.random.default_rng(seed)
    attacked = {a: ([attack(im, a, rng) for im in wm], [attack(im, a, rng) for im in clean]) for a in attacks}
    res = header(n, keyring, recovery, search, gen_steps=gen_steps, batch=batch, device=device)
    res.update(seed=seed, first_image=first_image)
    res["null_models"] = {role: null.meta.get("file", "given") for role, null in nulls.items() if null is not None}
    verdicts = Verdicts(model, recovery, nulls, search)
    looks_by_attack = robustness(res, model, attacked, keyring[:n], recovery, nulls, search=search, batch=batch, log=log)
    checkpoint(res)
    res["identification"], res["identification_seconds_per_image"] = identification(verdicts, attacked, looks_by_attack,
                                                                                    keyring, log)
    checkpoint(res)
    clean_looks_by_attack = {a: (attacked[a][1], looks_by_attack[a][1]) for a in attacked}
    for label, kw in (PATTERNS if patterns is None else patterns).items():
        res["patterns"][label] = compare_pattern(model, verdicts, kw, clean_looks_by_attack, attacks, n=pattern_n,
                                                 seed=seed, seeds=seeds, gen_steps=gen_steps, batch=batch)
        rows = res["patterns"][label]["rows"]
        log(f"pattern {label}: mean attacked AUC {rows['mean_attacked_auc']:.3f}, TPR@1%FPR "
            f"{rows['mean_attacked_tpr_at_1pct_fpr']:.3f}")
        checkpoint(res)
    if sweep_n and sweep_iters and sweep_steps:  # on the first sweep_n images per class
        res["sweep"] = sweep(model, {a: (w[:sweep_n], c[:sweep_n]) for a, (w, c) in attacked.items()},
                             keyring[:sweep_n], iters_grid=sorted(sweep_iters), steps_grid=sorted(sweep_steps),
                             search=search, batch=batch, log=log)
        checkpoint(res)
    if verify_n:
        res["verify"] = verify_defaults(model, wm[:verify_n], keyring[0], seed=seed, gen_steps=gen_steps,
                                        device=device)
        log(f"verify: {res['verify']}")
    return res


def header(n: int, keyring: list[Key], recovery: Recovery, search: str, *, gen_steps: int, batch: int,
           device: str) -> dict:
    """The report's settings, and its tables still empty."""
    key0 = keyring[0]
    return {"n": n, "keys": len(keyring), "gen_steps": gen_steps, "alpha": ALPHA,
            "recovery": {"method": recovery.method, "iters": recovery.iters, "ddim_steps": recovery.ddim_steps},
            "search": search, "transforms": len(search_grid(search)),
            "key": {"pattern": key0.pattern, "radius": key0.radius, "channels": list(key0.channels),
                    "latent_shape": list(key0.latent_shape)},
            "batch": batch, "machine": report.machine(device), "date": time.strftime("%Y-%m-%d"),
            "robustness": {}, "identification": {}, "patterns": {}, "sweep": {}}


def robustness(res: dict, model, attacked: dict, keys: list[Key], recovery: Recovery, nulls: dict, *, search: str,
               batch: int, log) -> dict:
    """Table 1: each attack's AUC and TPR, with the search and without, and foreign keys flagged;
    fills ``res`` and returns each attack's first looks (watermarked, clean), taken once."""
    looks_by_attack, seconds = {}, []
    for a, (w, c) in attacked.items():
        (l_w, s_w), (l_c, s_c) = looks_at(model, w, recovery, batch), looks_at(model, c, recovery, batch)
        looks_by_attack[a] = (l_w, l_c)
        seconds.append((s_w + s_c) / 2)
    res["recovery"]["seconds_per_image"] = float(np.mean(seconds))
    log(f"first looks at {2 * len(keys)} x {len(attacked)} images, {res['recovery']['seconds_per_image']:.2f}s "
        "per image")
    for label in (search, "none") if search != "none" else ("none",):
        verdicts = Verdicts(model, recovery, nulls, label)
        p_wm, p_clean, foreign = {}, {}, {}
        for a, (w, c) in attacked.items():
            p_wm[a], foreign[a] = verdicts.own_and_foreign(to_tensor(w), looks_by_attack[a][0], keys)
            p_clean[a], _ = verdicts.own_and_foreign(to_tensor(c), looks_by_attack[a][1], keys)
        row = res["robustness"][f"search {label}"] = rows_for(p_wm, p_clean, list(attacked))
        row["foreign_key_flagged"] = {a: float(np.mean(foreign[a] <= ALPHA)) for a in attacked}
        log(f"search {label}: mean attacked AUC {row['mean_attacked_auc']:.3f}, TPR@1%FPR "
            f"{row['mean_attacked_tpr_at_1pct_fpr']:.3f}; clean {row['none']['auc']:.3f} / "
            f"{row['none']['tpr_at_1pct_fpr']:.2f}")
    return looks_by_attack


def identification(verdicts: Verdicts, attacked: dict, looks_by_attack: dict, keyring: list[Key], log) -> tuple[dict, float]:
    """Table 2: per attack, how often the best of the whole keyring is image i's key i, and at alpha;
    and the seconds per image of testing it."""
    t0, out = time.time(), {}
    for a, (w, c) in attacked.items():
        truth = np.arange(len(w))
        best, p = verdicts.identify(to_tensor(w), looks_by_attack[a][0], keyring)
        _, p_c = verdicts.identify(to_tensor(c), looks_by_attack[a][1], keyring)
        out[a] = {"accuracy": float(np.mean(best == truth)),
                  "identified_at_alpha": float(np.mean((best == truth) & (p <= ALPHA))),
                  "wrong_key_flagged": float(np.mean((best != truth) & (p <= ALPHA))),
                  "clean_flagged": float(np.mean(p_c <= ALPHA))}
        log(f"identification among {len(keyring)} keys, {a}: {out[a]}")
    return out, (time.time() - t0) / (2 * sum(len(w) for w, _ in attacked.values()))


def compare_pattern(model, verdicts: Verdicts, kw: dict, clean: dict, attacks, *, n: int, seed: int, seeds: list,
                    gen_steps: int, batch: int) -> dict:
    """Table 3, one row: ``n`` images with the pattern ``kw``'s own keys (the same seeds), attacked,
    against the first ``n`` clean images (``clean``: per attack, the images and their first look)."""
    keys = make_keys(model, n, seed + 7919, **kw)
    images = make_images(model, keys, seeds[:n], gen_steps)
    rng = np.random.default_rng(seed + 1)
    p_w, p_c, f = {}, {}, {}
    for a in attacks:
        hit = [attack(im, a, rng) for im in images]
        looks, _ = looks_at(model, hit, verdicts.recovery, batch)
        p_w[a], f[a] = verdicts.own_and_foreign(to_tensor(hit), looks, keys)
        images_c, looks_c = clean[a]
        p_c[a], _ = verdicts.own_and_foreign(to_tensor(images_c[:n]), {r: v.rows(list(range(n))) for r, v in looks_c.items()},
                                             keys)
    return {"rows": rows_for(p_w, p_c, attacks), "key": {**kw, "radius": keys[0].radius,
                                                          "channels": list(keys[0].channels)},
            "mean_abs_cosine": mean_abs_cosine(keys),
            "foreign_key_flagged": float(np.mean([np.mean(v <= ALPHA) for v in f.values()]))}


def verify_defaults(model, images: list, key: Key, *, seed: int, gen_steps: int, device: str) -> dict:
    """Table 4: ``api.verify`` as a user runs it, today's defaults against the previous ones."""
    prev_key = make_keys(model, 1, seed, **PREVIOUS["key"])[0]
    prev_images = make_images(model, [prev_key] * len(images), list(range(len(images))), gen_steps)
    return {"images": len(images), "default": verify_seconds(images, key, device),
            "previous_default": verify_seconds(prev_images, prev_key, device, recovery=PREVIOUS["recovery"],
                                               search=PREVIOUS["search"])}


def mean_abs_cosine(keys: list[Key]) -> float:
    """Mean |cos| between distinct keys of a pattern (how much of one key another shows)."""
    from ..scheme.detection import direction

    d = torch.stack([direction(k) for k in keys])
    c = (d @ d.T).abs()
    return float((c.sum() - c.diagonal().sum()) / (len(keys) * (len(keys) - 1)))


def sweep(model, attacked: dict, keys: list[Key], iters_grid: list[int], steps_grid: list[int], search: str,
          batch: int, log) -> dict:
    """TPR and AUC per attack for each (decoder iterations, DDIM steps), and its seconds per image
    as the sum of the parts measured in this run: the encoder, one forward-step iteration, one
    UNet evaluation, and the test with the search."""
    p = {(i, s): ({}, {}) for i in iters_grid for s in steps_grid}
    t_enc, t_iter, t_unet, t_test, count = 0.0, 0.0, 0.0, 0.0, 0
    for a, sets in attacked.items():
        for side, images in enumerate(sets):
            for (i, s) in p:
                p[(i, s)][side][a] = []
            for j in range(0, len(images), batch):
                x = to_tensor(images[j : j + batch])
                snaps = {}
                t0 = time.perf_counter()
                snaps[0] = model.encode(x)
                t1 = time.perf_counter()
                if max(iters_grid) > 0:
                    def keep(info):  # info["z"] is z_i, after i updates
                        if 0 < info["i"] in iters_grid:
                            snaps[info["i"]] = info["z"].clone()

                    z, _ = latents_from_images(model, x, Recovery("fixed_point", max(iters_grid)), keep)
                    snaps[max(iters_grid)] = z
                t2 = time.perf_counter()
                t_enc += t1 - t0
                if max(iters_grid) > 0:  # the forward steps alone: their run encodes once more
                    t_iter += (t2 - t1 - (t1 - t0)) / max(iters_grid)
                for s in steps_grid:
                    t3 = time.perf_counter()
                    z_T = noise_from_latents(model, torch.cat([snaps[i] for i in iters_grid]), Recovery(ddim_steps=s))
                    t_unet += (time.perf_counter() - t3) / (s * len(iters_grid))
                    for k, i in enumerate(iters_grid):
                        t4 = time.perf_counter()
                        look, verdicts = setting(model, i, s, snaps[i], z_T[k * len(x) : (k + 1) * len(x)], search)
                        pc, _ = verdicts.own_and_foreign(x, look, keys[j : j + len(x)])
                        t_test += time.perf_counter() - t4
                        p[(i, s)][side][a] += pc.tolist()
                count += len(x)
    per = {"encoder": t_enc / count, "iteration": t_iter / count, "unet": t_unet / count,
           "test": t_test / (count * len(steps_grid) * len(iters_grid))}
    out = {"seconds_per_part": per}
    for (i, s), (wm, clean) in p.items():
        rows = rows_for({a: np.array(v) for a, v in wm.items()}, {a: np.array(v) for a, v in clean.items()},
                        list(wm))
        for a in rows:
            if isinstance(rows[a], dict):
                rows[a].pop("p_wm"), rows[a].pop("p_clean")
        sec = per["encoder"] + i * per["iteration"] + s * per["unet"] + per["test"]
        out[f"{i},{s}"] = {"iters": i, "ddim_steps": s, "seconds_per_image": sec, "rows": rows}
        log(f"sweep iters {i:3d} steps {s:3d}: {sec:.2f}s/image, clean TPR@alpha {rows['none']['tpr_at_alpha']:.2f}, "
            f"mean attacked TPR@alpha {rows['mean_attacked_tpr_at_alpha']:.3f}, AUC {rows['mean_attacked_auc']:.3f}")
    return out


def setting(model, iters: int, steps: int, z_0: torch.Tensor, z_T: torch.Tensor, search: str) -> tuple:
    """The first look of the forward step's ``iters`` iterations and ``steps`` DDIM steps, taken from
    the sweep's snapshots, and the ``Verdicts`` of that recovery (no null model is made for it)."""
    recovery = Recovery("fixed_point", iters, steps, refine="none").for_model(model.default_recovery)
    b = len(z_0)
    record = InversionRecord(method="fixed_point", iterations=torch.full((b,), iters), residual=torch.zeros(0, b),
                             pixel_error=torch.zeros(0, b))
    look = Look(spec=recovery.looks()["first"], z_0=z_0.float().cpu(), z_T=z_T, record=record)
    return {"first": look}, Verdicts(model, recovery, {}, search)


def verify_seconds(images: list[Image.Image], key: Key, device: str, recovery: Recovery = Recovery(), search: str = DEFAULT_SEARCH) -> float:
    """Seconds per image of ``api.verify`` on a folder of ``images``, as a user runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, im in enumerate(images):
            im.save(Path(tmp) / f"{i:05d}.png")
        t0 = time.perf_counter()
        api.verify([tmp], [key], recovery=recovery, search=search, device=device)
        return (time.perf_counter() - t0) / len(images)


def main(n: int, n_keys: int, pattern_n: int, sweep_n: int, sweep_iters: list[int],
         sweep_steps: list[int], search: str, batch: int, device: str, quick: bool, outdir: Path, log,
         seed: int = 20241127, first_image: int = 0, verify_n: int = 32, attacks=ATTACKS) -> str:
    """``ringmark bench detect``: run, write detect.json/.md/_tpr_time.png into ``outdir``, return the markdown."""
    steps = 50
    if quick:
        n, n_keys, pattern_n, sweep_n, sweep_iters, sweep_steps, steps, verify_n = 4, 16, 2, 2, [0, 1], [1, 2], 5, 2
    command = "ringmark bench detect " + " ".join(sys.argv[3:])
    dev = report.bench_device(device)
    out = Path(outdir)
    patterns = dict(list(PATTERNS.items())[:2]) if quick else PATTERNS
    res = run(n, n_keys, attacks=tuple(a for a in ATTACKS if a in attacks),
              recovery=Recovery(ddim_steps=steps) if quick else Recovery(), search=search,
              patterns=patterns if pattern_n else {}, pattern_n=pattern_n, sweep_n=sweep_n, sweep_iters=sweep_iters,
              sweep_steps=sweep_steps, gen_steps=steps, seed=seed, first_image=first_image, batch=batch, device=dev,
              verify_n=verify_n, log=log,
              checkpoint=lambda partial: report.write_partial({**partial, "command": command}, out, "detect"))
    res["command"] = command
    for f in report.write(res, out, stem="detect", markdown=markdown, plot=plot_sweep, plot_name="detect_tpr_time.png"):
        log(f"wrote {f}")
    return markdown(res)


def _method(rec: dict) -> str:
    return f"{rec['method']} {rec['iters']} it." if rec["method"] in ITERATIVE else rec["method"]


def _cell(row: dict) -> str:
    return f"{row['auc']:.3f} / {row['tpr_at_1pct_fpr']:.2f}"


def markdown(res: dict) -> str:
    """The report: its settings, then a table per part the run measured."""
    attacks = [a for a in ATTACKS if a in res["identification"]]
    key, rec = res["key"], res["recovery"]
    lines = [f"N = {res['n']} watermarked (image i carries key i of a {res['keys']}-key keyring) + {res['n']} clean; "
             f"generation {res['gen_steps']} DDIM steps; key {key['pattern']} r={key['radius']} channels "
             f"{key['channels']} on a {key['latent_shape']} latent; recovery {_method(rec)} + "
             f"{rec['ddim_steps']} DDIM steps ({rec.get('seconds_per_image', float('nan')):.2f} s/image); "
             f"search '{res['search']}' ({res['transforms']} transforms); images from seed "
             f"{res.get('first_image', 0)}; every p-value verify's (`pipeline.detect`), null models: "
             f"{', '.join(res.get('null_models', {}).values()) or 'none'}; {res['machine']}; {res['date']}", ""]
    lines += _robustness_table(res, attacks)
    if res["identification"]:
        lines += _identification_table(res, attacks)
    if res["patterns"]:
        lines += _pattern_table(res, attacks)
    if res["sweep"]:
        lines += _sweep_table(res)
    if "verify" in res:
        v = res["verify"]
        lines += [f"`api.verify` on a folder of {v['images']} images: today's defaults {v['default']:.2f} s/image, "
                  f"the previous defaults (ring key, forward step 10 it., 50 DDIM steps, no search) "
                  f"{v['previous_default']:.2f} s/image: {v['default'] / v['previous_default']:.2f}x."]
    return "\n".join(lines) + "\n"


def _robustness_table(res: dict, attacks: list[str]) -> list[str]:
    lines = ["| test | " + " | ".join(attacks) + " | mean attacked | foreign key flagged |",
             "|---" * (len(attacks) + 3) + "|"]
    for label, rows in res["robustness"].items():
        foreign = np.mean(list(rows["foreign_key_flagged"].values()))
        lines.append(f"| {label} | " + " | ".join(_cell(rows[a]) for a in attacks)
                     + f" | {rows['mean_attacked_auc']:.3f} / {rows['mean_attacked_tpr_at_1pct_fpr']:.2f} | "
                     f"{foreign:.3f} |")
    return lines + ["", "Cells: AUC / TPR at 1% FPR (empirical threshold from the clean images). Foreign key "
                    "flagged: share of the watermarked images (all conditions) whose p-value for another key of the "
                    f"keyring, tested alone, is <= {res['alpha']}.", ""]


def _identification_table(res: dict, attacks: list[str]) -> list[str]:
    lines = [f"| among {res['keys']} keys | " + " | ".join(attacks) + " | mean attacked |",
             "|---" * (len(attacks) + 2) + "|"]
    for field, name in (("accuracy", "best key is the right one"), ("identified_at_alpha", "... and p <= alpha"),
                        ("wrong_key_flagged", "a wrong key flagged"), ("clean_flagged", "clean image flagged")):
        vals = [res["identification"][a][field] for a in attacks]
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | {np.mean(vals[1:] or vals):.3f} |")
    return lines + ["", f"p-values corrected for {res['keys']} keys x {res['transforms']} transforms; alpha = "
                    f"{res['alpha']}. Scoring {res['identification_seconds_per_image'] * 1000:.0f} ms per image.", ""]


def _pattern_table(res: dict, attacks: list[str]) -> list[str]:
    lines = ["| pattern | " + " | ".join(attacks) + " | mean attacked | mean cos | foreign key flagged |",
             "|---" * (len(attacks) + 4) + "|"]
    for label, p in res["patterns"].items():
        rows = p["rows"]
        lines.append(f"| {label} | " + " | ".join(_cell(rows[a]) for a in attacks)
                     + f" | {rows['mean_attacked_auc']:.3f} / {rows['mean_attacked_tpr_at_1pct_fpr']:.2f} | "
                     f"{p['mean_abs_cosine']:.3f} | {p['foreign_key_flagged']:.3f} |")
    n_p = len(next(iter(res["patterns"].values()))["rows"]["none"]["p_wm"])
    return lines + ["", f"Patterns: {n_p} watermarked images each against the first {n_p} clean ones, same "
                    "recovery and search. Mean cos: mean |cos| between two keys of the pattern.", ""]


def _sweep_table(res: dict) -> list[str]:
    per = res["sweep"]["seconds_per_part"]
    lines = ["| decoder it. | DDIM steps | s/image | clean TPR@alpha | mean attacked TPR@alpha | "
             "mean attacked AUC | on the front |", "|---" * 7 + "|"]
    points = [v for k, v in res["sweep"].items() if k != "seconds_per_part"]
    front = pareto(points)
    for v in sorted(points, key=lambda v: v["seconds_per_image"]):
        r = v["rows"]
        lines.append(f"| {v['iters']} | {v['ddim_steps']} | {v['seconds_per_image']:.2f} | "
                     f"{r['none']['tpr_at_alpha']:.2f} | {r['mean_attacked_tpr_at_alpha']:.3f} | "
                     f"{r['mean_attacked_auc']:.3f} | {'yes' if id(v) in front else ''} |")
    return lines + ["", "Sweep: TPR at p <= alpha (the p-values are calibrated, so alpha is the false-positive "
                    "rate); seconds per image are the sum of the parts measured in the run: encoder "
                    f"{per['encoder'] * 1000:.0f} ms, one forward-step iteration {per['iteration'] * 1000:.0f} ms, "
                    f"one UNet evaluation {per['unet'] * 1000:.0f} ms, the test with the search "
                    f"{per['test'] * 1000:.0f} ms.", ""]


def pareto(points: list[dict]) -> set[int]:
    """ids of the points no other point beats on both time and mean attacked TPR at alpha."""
    def tpr(v):
        return v["rows"]["mean_attacked_tpr_at_alpha"]

    return {id(v) for v in points if not any(
        (w["seconds_per_image"] <= v["seconds_per_image"] and tpr(w) > tpr(v)) or
        (w["seconds_per_image"] < v["seconds_per_image"] and tpr(w) >= tpr(v)) for w in points)}


def plot_sweep(res: dict, path: Path) -> bool:
    plt = report.pyplot()
    if plt is None or not res["sweep"]:
        return False
    points = [v for k, v in res["sweep"].items() if k != "seconds_per_part"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for i in sorted({v["iters"] for v in points}):
        row = sorted((v for v in points if v["iters"] == i), key=lambda v: v["ddim_steps"])
        ax.plot([v["seconds_per_image"] for v in row], [v["rows"]["mean_attacked_tpr_at_alpha"] for v in row],
                marker="o", label=f"{i} decoder it.")
        for v in row:
            ax.annotate(str(v["ddim_steps"]), (v["seconds_per_image"], v["rows"]["mean_attacked_tpr_at_alpha"]),
                        fontsize=7)
    ax.set(xlabel="seconds per image (sum of measured parts)", ylabel=f"mean attacked TPR at p <= {res['alpha']}",
           xscale="log", title="verify time vs detection (labels: DDIM steps)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True
