"""Content fingerprints for the generation log (issue 35, item 2): which one separates "the same
generation, edited" from "another generation of the same model", at what size and cost.

Genuine pairs: each watermarked PNG (made by ringmark, image s carries the ``rand`` key of seed
s + 7) under each of Tree-Ring's six attacks and the held-out edits, against the fingerprint
logged for that PNG (``api.logged``, as ``embed --log`` records it). Impostor pairs: the same
edited image against the logged fingerprints of other generations of the model (clean PNGs from
other seeds). The latent fingerprint of an edited image is compared as ``verify --log`` compares it: the
decided look's z_0 (``detect(..., latents=True)``), best over the search's transforms undone.
Candidates: ``latent`` (512 bytes; best over every transform of the search), ``latent_found_transform``
(the same, over the found transform's crop offsets only: ``fingerprint.family``), ``pixels`` (the
thumbnail, 1,536 bytes; ``fingerprint.pixel_similarity`` over the found transform's crop offsets), ``phash`` (8 bytes),
and regeneration from the logged seed and key (nothing stored; one generation per check, then the
latent fingerprint of it, best over every transform).

    python docs/bench/provenance/measure.py --wm /data/tiny-wm --clean /data/tiny-clean -n 48 --impostors 400 \\
        -o docs/bench/provenance/tiny.json
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from watermark.bench.attacks import ATTACKS, HELD_OUT, attack
from watermark.io.images import to_pil, to_tensor
from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, detect, take_looks
from watermark.provenance import fingerprint
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.geometry import search_grid
from watermark.scheme.keys import new_key
from watermark.verifier import Verifier

ALPHA = 0.01
FPRS = (1e-2, 1e-3)


def pngs(folder: str, n: int) -> tuple[list[int], list[Image.Image]]:
    files = sorted(Path(folder).glob("*.png"), key=lambda p: int(p.stem))[:n]
    return [int(f.stem) for f in files], [Image.open(f).convert("RGB") for f in files]


def logged_prints(model, images: list[Image.Image], batch: int = 16) -> np.ndarray:
    """The latent fingerprint (``fingerprint.latent`` of the first look's z_0), as ``embed --log``
    recorded it before thumbnails replaced it."""
    from watermark.recovery import look_latents

    spec = Recovery().for_model(model.default_recovery).looks()["first"]
    out = [fingerprint.latent(look_latents(model, to_tensor(images[i : i + batch]), spec)[0])
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def roc(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """AUC, and the share of genuine pairs above the threshold each FPR of the impostors allows."""
    from scipy import stats

    auc = stats.mannwhitneyu(genuine, impostor, alternative="greater").statistic / (len(genuine) * len(impostor))
    out = {"auc": float(auc), "genuine_mean": float(genuine.mean()), "impostor_mean": float(impostor.mean()),
           "impostor_max": float(impostor.max()), "impostors": int(len(impostor))}
    for fpr in FPRS:
        t = float(np.quantile(impostor, 1 - fpr))
        out[f"tpr_at_fpr_{fpr:g}"] = float(np.mean(genuine > t))
    out["genuine_at_least"] = {f"{m:g}": float(np.mean(genuine >= m)) for m in (0.6, 0.7, 0.8, 0.9)}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wm", required=True)
    ap.add_argument("--clean", required=True)
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--impostors", type=int, default=400)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = get_model("tiny")
    seeds, wm = pngs(args.wm, args.n)
    _, clean = pngs(args.clean, args.impostors)
    keys = [new_key("tiny", model.latent_shape(model.default_size), seed=s + 7) for s in seeds]
    verifier = Verifier(keys[:1], Recovery(), Decision(alpha=ALPHA))
    t0 = time.perf_counter()
    own = logged_prints(model, wm)
    t_log = (time.perf_counter() - t0) / len(wm)
    others = logged_prints(model, clean)
    t0 = time.perf_counter()
    own_hash = np.stack([fingerprint.phash(im) for im in wm])
    t_hash = (time.perf_counter() - t0) / len(wm)
    other_hash = np.stack([fingerprint.phash(im) for im in clean])
    t0 = time.perf_counter()
    own_px = fingerprint.pixels(to_tensor(wm)).numpy()
    t_px = (time.perf_counter() - t0) / len(wm)
    other_px = fingerprint.pixels(to_tensor(clean)).numpy()
    # regeneration: the logged seed and key make the image again (in gen.py's batches of 8)
    t0 = time.perf_counter()
    regen = []
    for i in range(0, len(seeds), 8):
        z = torch.cat([watermarked_latents(k, seeds=[s]) for k, s in zip(keys[i : i + 8], seeds[i : i + 8])])
        regen += to_pil(model.generate(z, 50))
    t_regen = (time.perf_counter() - t0) / len(seeds)
    same = [png_bytes(a) == (Path(args.wm) / f"{s}.png").read_bytes() for a, s in zip(regen, seeds)]
    worst = max(int(np.abs(np.asarray(a, int) - np.asarray(b, int)).max()) for a, b in zip(regen, wm))
    regen_prints = logged_prints(model, regen)
    transforms = search_grid(verifier.decision.search, model.latent_shape(model.default_size)[-1])
    by_name = {t.name: t for t in transforms}
    rng = np.random.default_rng(0)
    t_px_check = []
    edits = {**{f"tree-ring {a}": (lambda im, r, a=a: attack(im, a, r)) for a in ATTACKS}, **HELD_OUT}
    res = {"n": len(wm), "impostor_pool": len(clean), "edits": {}, "bytes": {"latent": own.shape[1] * 2, "phash": 8,
                                                                              "pixels": own_px.shape[1] * 2,
                                                                              "regeneration": 0}}
    all_g, all_i, all_gh, all_ih, all_r, all_fg, all_fi, all_pg, all_pi, detected = ([] for _ in range(10))
    for name, edit in edits.items():
        hit = [edit(im, rng) for im in wm]
        x = to_tensor(hit)
        first = take_looks(model, x, verifier.recovery, roles=("first",))["first"]
        g, imp, found, g_regen, g_found, imp_found, g_px, imp_px = ([] for _ in range(8))
        for i, key in enumerate(keys):
            d, = detect(model, x[i : i + 1], [key], verifier.recovery, verifier.decision, nulls=verifier.nulls,
                        taken={"first": first.rows([i])}, latents=True)
            sims = fingerprint.best_similarity(d.z_0, np.concatenate([own[i : i + 1], others]), transforms)
            g.append(sims[0])  # against its own logged generation
            imp.append(sims[1:])  # against the others
            near = fingerprint.family(by_name[d.transform], transforms)  # only the found transform's crop offsets
            sims = fingerprint.best_similarity(d.z_0, np.concatenate([own[i : i + 1], others]), near)
            g_found.append(sims[0])
            imp_found.append(sims[1:])
            g_regen.append(fingerprint.best_similarity(d.z_0, regen_prints[i : i + 1], transforms)[0])
            t0 = time.perf_counter()
            sims = fingerprint.pixel_similarity(x[i], np.concatenate([own_px[i : i + 1], other_px]), near)
            t_px_check.append(time.perf_counter() - t0)
            g_px.append(sims[0])
            imp_px.append(sims[1:])
            found.append(d.watermarked)
        g, imp, g_found, imp_found = np.array(g), np.concatenate(imp), np.array(g_found), np.concatenate(imp_found)
        g_px, imp_px = np.array(g_px), np.concatenate(imp_px)
        hashes = np.stack([fingerprint.phash(im) for im in hit])
        gh, ih = np.einsum("nd,nd->n", hashes, own_hash), (hashes @ other_hash.T).ravel()
        res["edits"][name] = {"watermarked": float(np.mean(found)), "latent": roc(g, imp), "phash": roc(gh, ih),
                              "latent_found_transform": roc(g_found, imp_found), "pixels": roc(g_px, imp_px),
                              "pixels_genuine": g_px.round(4).tolist(),
                              "regeneration": roc(np.array(g_regen), imp),
                              "latent_genuine": g.round(4).tolist()}
        for pool, v in ((all_g, g), (all_i, imp), (all_gh, gh), (all_ih, ih), (all_r, g_regen), (all_fg, g_found),
                        (all_fi, imp_found), (all_pg, g_px), (all_pi, imp_px)):
            pool.append(v)
        detected += found
        print(name, json.dumps({k: v for k, v in res["edits"][name].items() if not k.endswith("_genuine")}), flush=True)
    res["pooled"] = {"latent": roc(np.concatenate(all_g), np.concatenate(all_i)),
                     "phash": roc(np.concatenate(all_gh), np.concatenate(all_ih)),
                     "regeneration": roc(np.concatenate(all_r), np.concatenate(all_i)),
                     "latent_found_transform": roc(np.concatenate(all_fg), np.concatenate(all_fi)),
                     "pixels": roc(np.concatenate(all_pg), np.concatenate(all_pi)),
                     "watermarked": float(np.mean(detected))}
    res["seconds"] = {"latent_at_embed": t_log, "latent_at_verify": "none beyond detect (pooling the decided look's z_0)",
                      "phash": t_hash, "regeneration_per_check": t_regen, "pixels_at_embed": t_px,
                      "pixels_per_check_against_pool": float(np.median(t_px_check))}
    res["regeneration"] = {"identical_png": int(sum(same)), "of": len(same), "max_pixel_difference": worst}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res.update(machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               commit=commit, command="python " + " ".join(sys.argv), date=time.strftime("%Y-%m-%d"))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("pooled", "seconds", "bytes")}, indent=1))


if __name__ == "__main__":
    main()
