"""``ringmark bench security``: what an adversary who has the public model (the bundled one) but not
the key can do, and what the defences of ``verify`` cost.

- Averaging (Yang et al., NeurIPS 2024): the mean of M watermarked images of one key less the mean
  of M clean images of the same model is a content-independent pattern delta. Forgery: a clean
  cover + delta; removal: a watermarked image - delta. M = 10, 100, 1000.
- Imprinting (Mueller et al., CVPR 2025): Adam on a pixel perturbation of a cover, kept at PSNR
  >= 30 dB, so that the public model's recovery of it (encoder and DDIM inversion, backpropagated)
  lands, on the frequencies where keys live, on the z_T recovered from one watermarked image
  (forgery), or on the image's own z_T with those frequencies replaced by random values
  (removal). Success: verified (forgery) or missed (removal) at alpha = 0.01.
- Regeneration (WAVES, ICML 2024): a VAE round trip, and diffusion regeneration (noise z_0 to
  strength s, denoise with DDIM) at s = 0.1 ... 0.5: TPR at 1 % FPR (the clean images
  regenerated too).

Defences (``Defences``): a keyring of many keys, with the rule that one image may fire exactly
one key; and the consistency check (``pipeline.consistency``), which regenerates the image from its
recovered z_T and rejects a match whose regeneration is far from the image.
Verification is ``pipeline.detect`` as ``verify`` runs it: the model's recovery and null model,
the default geometric search.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from inversion.ddim import ddim_invert_graph
from ..io.nullfile import resolve_nulls
from ..models import get_model
from ..pipeline import Decision, Recovery, consistency, detect, psnr, recover_noise
from ..scheme.detection import match_keys
from ..io.images import to_pil, to_tensor
from ..scheme.embedding import inject, watermarked_latents
from ..scheme.keys import Key, circle_mask, default_radius, new_key
from .attacks import ATTACKS, attack
from .detect import tpr_at_fpr
from .null import photographs
from .report import write_json, write_partial

ALPHA = 0.01
MIN_PSNR = 30.0
THRESHOLDS = (12.0, 14.0, 16.0, 18.0, 20.0)  # candidate consistency thresholds (dB)


def generate(model, key: Key, seeds, steps: int, watermark: bool, batch: int = 32) -> torch.Tensor:
    """Images in [-1, 1] from the noise of ``seeds``, with or without ``key``."""
    seeds = list(seeds)
    return torch.cat([model.generate(watermarked_latents(key, seeds=seeds[i : i + batch], watermark=watermark),
                                     steps) * 2 - 1 for i in range(0, len(seeds), batch)])


class Verify:
    """``verify`` on tensors: the model's recovery and null model, the default search."""

    def __init__(self, model, model_name: str, keys: list[Key]):
        self.model, self.keys = model, keys
        self.recovery = Recovery().for_model(model.default_recovery)
        self.nulls = resolve_nulls("auto", model_name, self.recovery.looks(), tuple(keys[0].latent_shape))

    def p(self, x: torch.Tensor, keys: list[Key] | None = None, batch: int = 32) -> np.ndarray:
        return self.detections(x, keys, batch)[:, 0]

    def detections(self, x: torch.Tensor, keys: list[Key] | None = None, batch: int = 32) -> np.ndarray:
        """(B, 2): each image's best key's p-value and the runner-up's, both corrected over ``keys``."""
        keys = keys or self.keys
        return np.array([(d.p_value, d.runner_up_p_value) for i in range(0, len(x), batch)
                         for d in detect(self.model, x[i : i + batch], keys, self.recovery, Decision(alpha=ALPHA),
                                         nulls=self.nulls)])

    def fired(self, x: torch.Tensor, keys: list[Key], batch: int = 32) -> np.ndarray:
        """How many of ``keys`` each image fires at ALPHA (each key tested alone, Šidák over the
        keyring): the 'exactly one key' rule rejects an image that fires more than one."""
        from ..scheme.detection import sidak

        out = []
        for i in range(0, len(x), batch):
            z_T, _ = recover_noise(self.model, x[i : i + batch], self.recovery)
            per_key = np.array([[m.raw_p_value for m in match_keys(z_T, [k], null=self.nulls["first"])] for k in keys]).T
            out.append((np.vectorize(lambda p: sidak(p, len(keys)))(per_key) <= ALPHA).sum(1))
        return np.concatenate(out)


def removal_target(z_T: torch.Tensor, key: Key, seed: int = 1) -> torch.Tensor:
    """z_T with the key's bins overwritten by another key's values (drawn from ``seed``, so a run
    repeats: with unseeded decoys the TPR left after 20 steps ranged over 0-88 % on 8 images):
    where imprinting removal sends the inversion."""
    decoy = new_key(key.model, tuple(key.latent_shape), key.pattern, key.radius, key.channels, seed=seed)
    return inject(z_T.double(), decoy).float()


def public_mask(shape) -> torch.Tensor:
    """(H, W): where the default keys live; the scheme is public, so every attacker knows it."""
    return circle_mask(shape[1:], default_radius(shape[1], "rand"))


def consistency_psnr(model, verify: Verify, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    """PSNR of each image to the image regenerated from its recovered z_T (``pipeline.consistency``)."""
    return np.concatenate([consistency(model, x[i : i + batch], verify.recovery) for i in range(0, len(x), batch)])


def generate_each(model, keys: list[Key], seeds, steps: int, batch: int = 32) -> torch.Tensor:
    """Image j from the noise of seed j carrying keys[j]."""
    z_T = torch.cat([watermarked_latents(k, seeds=[s]) for k, s in zip(keys, seeds)])
    return torch.cat([model.generate(z_T[i : i + batch], steps) * 2 - 1 for i in range(0, len(z_T), batch)])


def averaging(model, verify: Verify, key: Key, others: list[Key], ring: list[Key], budgets,
              covers: torch.Tensor, marked: torch.Tensor, steps: int, log) -> dict:
    """Forgery and removal with the pattern of M watermarked images, for each M in ``budgets``;
    the same with the M images spread over ``others`` (many keys, one per user), and with each
    image carrying a fresh key drawn at random from ``ring`` (``embed`` with a keyring). Returns
    the table and the forgeries of one key, by M."""
    out, forgeries = {}, {}
    top = max(budgets)
    wm = generate(model, key, range(200_000, 200_000 + top), steps, True)
    clean = generate(model, key, range(300_000, 300_000 + top), steps, False)
    spread = fresh = None
    if others:  # image j carries key j mod len(others): any first M images spread evenly over the keys
        spread = generate_each(model, [others[j % len(others)] for j in range(top)], range(400_000, 400_000 + top),
                               steps)
    if ring:  # as embed draws them (with a seeded generator here, so the run repeats)
        draw = np.random.default_rng(20261201).integers(len(ring), size=top)
        fresh = generate_each(model, [ring[j] for j in draw], range(500_000, 500_000 + top), steps)
    for m in budgets:
        delta = wm[:m].mean(0) - clean[:m].mean(0)
        forged = (covers + delta).clamp(-1, 1)
        removed = (marked - delta).clamp(-1, 1)
        row = {"forgery_success": float(np.mean(verify.p(forged) <= ALPHA)), "forgery_psnr": float(psnr(forged, covers).mean()),
               "removal_tpr": float(np.mean(verify.p(removed) <= ALPHA)), "removal_psnr": float(psnr(removed, marked).mean())}
        if spread is not None:
            d_many = spread[:m].mean(0) - clean[:m].mean(0)
            f_many = (covers + d_many).clamp(-1, 1)
            fired = verify.fired(f_many, others)
            row["many_keys_forgery_success"] = float(np.mean(fired >= 1))
            row["many_keys_forgery_success_one_key_rule"] = float(np.mean(fired == 1))
        if fresh is not None:
            f_fresh = (covers + fresh[:m].mean(0) - clean[:m].mean(0)).clamp(-1, 1)
            p = verify.detections(f_fresh, ring)
            row["fresh_keys_forgery_success"] = float(np.mean(p[:, 0] <= ALPHA))
            row["fresh_keys_forgery_success_one_key_rule"] = float(np.mean((p[:, 0] <= ALPHA) & (p[:, 1] > ALPHA)))
            row["fresh_keys_forgery_psnr"] = float(psnr(f_fresh, covers).mean())
        out[m], forgeries[m] = row, forged
        log(f"averaging M={m}: {row}")
    return out, forgeries


def imprint(model, covers: torch.Tensor, target: torch.Tensor, recovery: Recovery, steps: int = 150,
            lr: float = 0.005, mask: torch.Tensor | None = None, min_psnr: float = MIN_PSNR,
            batch: int = 8, checkpoints: tuple[int, ...] = (), pull=None) -> tuple[dict, float]:
    """Adam on a pixel perturbation of each cover so that the public model's recovery of it
    (encoder, then DDIM inversion, differentiable) lands on ``target`` z_T on the frequencies of
    ``mask`` (H, W) (every channel; the scheme is public, so the attacker knows where keys live,
    not what they hold), projected after every step onto PSNR >= ``min_psnr`` to the cover.
    ``pull``: a further loss per image of the perturbed image (the adaptive forger's,
    ``forgery.adaptive``), added with the same weight as the imprint's after each is divided by
    its value at the first step. Returns ({step: images} after each of ``checkpoints`` and after
    ``steps``, seconds per image for all ``steps``)."""
    t0 = time.perf_counter()
    schedule = model.schedule(recovery.ddim_steps, model.latent_shape(covers.shape[-1])[1:])
    budget = 4 * 10 ** (-min_psnr / 10)  # the largest mean squared error at min_psnr (range 2)
    keep = sorted({*checkpoints, steps})
    out: dict = {k: [] for k in keep}
    for i in range(0, len(covers), batch):
        x, goal = covers[i : i + batch], target[i : i + batch]
        delta = torch.zeros_like(x, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=lr)
        for step in range(1, steps + 1):
            forged = (x + delta).clamp(-1, 1)
            z_0 = model.encode(forged)
            z_T = ddim_invert_graph(model.predict, z_0, schedule, hold=model.hold)
            diff = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z_T - goal, dim=(-2, -1)), norm="ortho"),
                                      dim=(-2, -1))
            power = diff.abs().pow(2) if mask is None else diff.abs().pow(2)[..., mask]
            if pull is None:
                loss = power.sum() / len(x)
            else:  # each term relative to its start, per image
                terms = torch.stack([power.flatten(1).sum(1), pull(forged)])
                if step == 1:
                    scale = terms.detach().clamp_min(1e-12)
                loss = (terms / scale).sum() / len(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # project onto the PSNR ball
                mse = delta.pow(2).flatten(1).mean(1)
                delta *= (budget / mse.clamp_min(1e-12)).sqrt().clamp(max=1.0)[:, None, None, None]
            if step in out:
                out[step].append((x + delta.detach()).clamp(-1, 1))
    return {k: torch.cat(v) for k, v in out.items()}, (time.perf_counter() - t0) / len(covers)


def regeneration(model, x: torch.Tensor, strength: float, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """WAVES' regeneration: z_0 = E(x) noised to ``strength`` of the schedule, then DDIM back to 0
    (strength 0: the VAE round trip D(E(x)))."""
    from inversion.ddim import ddim_step

    with torch.no_grad():
        z = model.encode(x)
        if strength > 0:
            schedule = model.schedule(steps, z.shape[-2:])
            first = int(round((1 - strength) * steps))
            if first >= steps:
                raise ValueError(f"strength {strength} is less than one of the {steps} DDIM steps")
            g = torch.Generator().manual_seed(seed)
            z = schedule.a[first] * z + schedule.b[first] * torch.randn(z.shape, generator=g)
            for t, _, _, a_next, b_next in schedule.steps()[first:]:
                z = ddim_step(*model.predict(z, t), a_next, b_next)
        return model.decode(z).clamp(-1, 1)


def run(model_name: str = "tiny-sd", n: int = 100, budgets=(10, 100, 1000), imprint_n: int = 16,
        imprint_steps: int = 150, strengths=(0.1, 0.2, 0.3, 0.4, 0.5), steps: int = 10, many_keys: int = 8,
        fresh_keys: int = 2048, adaptive_n: int = 16, adaptive_steps: int = 50, outdir: str = "docs/bench/security",
        provenance_only: bool = False, adaptive_psnr=None, log=print) -> dict:
    """The tables of docs/concepts/threats.md and BENCHMARKS.md, a step each: the baseline, regeneration, averaging,
    imprinting, the consistency check on what verified, and (``adaptive_n`` > 0) the generation
    log's provenance check on all of it and on the adaptive forger (``forgery``); written to
    ``outdir/<model>.json``. ``provenance_only``: the forgeries the provenance part judges (imprinting,
    averaging with one key), none of the other tables; written to ``outdir/<model>-provenance.json``.
    ``adaptive_psnr``: the adaptive forger's PSNR floors (default ``forgery.ADAPTIVE_PSNR``). After
    each table the results so far go to ``<stem>.partial.json``, removed when the run completes."""
    t_start = time.perf_counter()
    out = Path(outdir)
    stem = f"{model_name}{'-provenance' * provenance_only}"
    command = "ringmark " + " ".join(sys.argv[1:])
    model = get_model(model_name)
    shape = model.latent_shape(model.default_size)
    key = new_key(model_name, shape, seed=20261201)
    others = [new_key(model_name, shape, seed=20261202 + i) for i in range(many_keys)]
    ring = [new_key(model_name, shape, seed=30_000_000 + i) for i in range(fresh_keys)]
    verify = Verify(model, model_name, [key])
    marked = generate(model, key, range(n), steps, True)
    covers = generate(model, key, range(100_000, 100_000 + n), steps, False)
    photos = photographs(n, model.default_size, seed=11)  # None without the train extra
    res = {"model": model_name, "n": n, "steps": steps, "alpha": ALPHA, "null_model": verify.nulls["first"] is not None,
           "many_keys": many_keys, "fresh_keys": fresh_keys}

    def checkpoint(**parts):
        write_partial({**res, **parts, "command": command}, out, stem)

    if provenance_only:
        others, ring = [], []
    else:
        res["baseline"] = {"tpr": float(np.mean(verify.p(marked) <= ALPHA)),
                           "fpr_model_images": float(np.mean(verify.p(covers) <= ALPHA)),
                           "fpr_photographs": None if photos is None else float(np.mean(verify.p(photos) <= ALPHA))}
        log(f"baseline: {res['baseline']}")
        res["regeneration"] = regeneration_table(model, verify, marked, covers, strengths=strengths, steps=steps, log=log)
        checkpoint()
    res["averaging"], averaged = averaging(model, verify, key, others=others, ring=ring, budgets=budgets,
                                              covers=covers, marked=marked, steps=steps, log=log)
    covers_by_kind = {"model images": covers[:imprint_n], "photographs": None if photos is None else photos[:imprint_n]}
    with torch.no_grad():  # what forgeries aim at: the z_T recovered from one watermarked image
        target, _ = recover_noise(model, marked[:1], verify.recovery)
    res["imprinting"], imprinted = imprinting_table(model, verify, key, marked[:imprint_n], target, covers_by_kind,
                                                    imprint_steps=imprint_steps, removal=not provenance_only, log=log)
    checkpoint()
    m = max([b for b in averaged if b <= 100] or averaged)  # the consistency check's sample: the largest M up to 100
    if not provenance_only:
        res["consistency"] = consistency_table(model, verify, marked[:32], {
            f"imprinting forgery of {kind}": by_steps[imprint_steps] for kind, (_, by_steps) in imprinted.items()},
            {f"averaging forgery M={m}": averaged[m]}, log=log)
        checkpoint()
    if adaptive_n or provenance_only:
        from . import forgery

        same_key = generate(model, key, range(600_000, 600_000 + n), steps, True)
        res["provenance"] = forgery.run(model, verify, key, marked, same_key, imprinted, averaged, covers[:adaptive_n],
                                        target, adaptive_steps, log, psnrs=adaptive_psnr,
                                        checkpoint=lambda part: checkpoint(provenance=part))
    res.update(seconds=round(time.perf_counter() - t_start, 1),
               machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               command=command)
    write_json(res, out, stem)
    res = json.loads(json.dumps(res))  # as read back from the file (string keys)
    log("\n".join(provenance_markdown(res["provenance"])) if provenance_only else markdown(res))
    return res


def regeneration_table(model, verify: Verify, marked: torch.Tensor, covers: torch.Tensor, *, strengths, steps: int,
                       log) -> dict:
    """Removal by regeneration: through the VAE, then diffusion at each strength."""
    out = {}
    for s in (0.0, *strengths):
        wm_p, clean_p = verify.p(regeneration(model, marked, s, steps)), verify.p(regeneration(model, covers, s, steps))
        row = {"tpr_at_1pct_fpr": tpr_at_fpr(wm_p, clean_p), "tpr_at_alpha": float(np.mean(wm_p <= ALPHA)),
               "fpr_at_alpha": float(np.mean(clean_p <= ALPHA)),
               "psnr": float(psnr(regeneration(model, marked[:16], s, steps), marked[:16]).mean())}
        out["vae" if s == 0 else f"diffusion {s:g}"] = row
        log(f"regeneration {s}: {row}")
    return out


def imprinting_table(model, verify: Verify, key: Key, marked: torch.Tensor, target: torch.Tensor,
                     covers_by_kind: dict, *, imprint_steps: int, removal: bool = True, log) -> tuple[dict, dict]:
    """Forgery of each kind of cover (toward ``target``, the z_T of one watermarked image) and, if
    ``removal``, removal of ``marked`` (toward a decoy), by steps; and {kind: (covers, {steps: forgeries})}."""
    recovery = verify.recovery
    shape = key.latent_shape
    out = {"steps": imprint_steps, "min_psnr": MIN_PSNR}
    mask = public_mask(shape)
    consistent = {}
    budgets_steps = tuple(k for k in (1, 2, 5, 10, 20, 50, 150) if k < imprint_steps)
    for name, cov in covers_by_kind.items():
        if cov is None:
            continue
        forged, sec = imprint(model, cov, target.expand(len(cov), -1, -1, -1), recovery, imprint_steps,
                              mask=mask, checkpoints=budgets_steps)
        rows = {}
        for k, images in forged.items():
            p = verify.p(images)
            ok = (p <= ALPHA) & (psnr(images, cov) >= MIN_PSNR)
            rows[k] = {"success": float(ok.mean()), "psnr": float(psnr(images, cov).mean()),
                       "median_p": float(np.median(p))}
        consistent[name] = (cov, forged)
        out[f"forgery of {name}"] = {"by_steps": rows, "seconds_per_image": round(sec, 1),
                                     "seconds_per_step_per_image": round(sec / imprint_steps, 2)}
        log(f"imprinting forgery {name}: {out[f'forgery of {name}']}")
    if not removal:
        return out, consistent
    with torch.no_grad():
        own, _ = recover_noise(model, marked, recovery)
    removed, sec = imprint(model, marked, removal_target(own, key), recovery, imprint_steps,
                           mask=mask, checkpoints=budgets_steps)
    out["removal"] = {
        "by_steps": {k: {"tpr": float(np.mean(verify.p(images) <= ALPHA)),
                         "psnr": float(psnr(images, marked).mean())} for k, images in removed.items()},
        "seconds_per_image": round(sec, 1)}
    log(f"imprinting removal: {out['removal']}")
    return out, consistent


def consistency_table(model, verify: Verify, marked: torch.Tensor, imprinted: dict, averaged: dict, *, log) -> dict:
    """The consistency check on the images that verify (forgeries, then ``marked`` under each
    attack): PSNR of each to its regeneration from its recovered z_T; a threshold rejects the
    genuine ones below it (lost TPR) and the forgeries."""
    rng = np.random.default_rng(0)
    genuine = {f"genuine, {name}": to_tensor([attack(im, name, rng) for im in to_pil((marked + 1) / 2)])
               for name in ATTACKS}
    table = {}
    for name, images in {**imprinted, **genuine, **averaged}.items():
        p, db = verify.p(images), consistency_psnr(model, verify, images)
        hit = p <= ALPHA
        table[name] = {"verified": float(hit.mean()), "psnr_of_verified": np.round(db[hit], 2).tolist(),
                       **{f"kept at {t:g} dB": float(np.mean(db[hit] >= t)) if hit.any() else None
                          for t in THRESHOLDS}}
        log(f"consistency {name}: {json.dumps({k: v for k, v in table[name].items() if k != 'psnr_of_verified'})}")
    return table


def markdown(res: dict) -> str:
    """The tables of one run (BENCHMARKS.md)."""
    pct = lambda v: "–" if v is None else f"{v:.0%}"  # noqa: E731
    out = ["| regeneration | PSNR to the image | TPR at 1 % FPR | TPR at alpha | FPR at alpha |", "|---|---|---|---|---|"]
    for name, r in res["regeneration"].items():
        out.append(f"| {name} | {r['psnr']:.1f} dB | {pct(r['tpr_at_1pct_fpr'])} | {pct(r['tpr_at_alpha'])} | "
                   f"{pct(r['fpr_at_alpha'])} |")
    out += ["", f"| averaging, M images | forgery success | PSNR | removal: TPR left | PSNR | M spread over "
            f"{res.get('many_keys', '?')} keys: forgery | with the one-key rule | a fresh key per image (ring of "
            f"{res.get('fresh_keys', '?')}): forgery | with the one-key rule |", "|---|---|---|---|---|---|---|---|---|"]
    for m, r in res["averaging"].items():
        out.append(f"| {m} | {pct(r['forgery_success'])} | {r['forgery_psnr']:.1f} dB | {pct(r['removal_tpr'])} | "
                   f"{r['removal_psnr']:.1f} dB | {pct(r.get('many_keys_forgery_success'))} | "
                   f"{pct(r.get('many_keys_forgery_success_one_key_rule'))} | "
                   f"{pct(r.get('fresh_keys_forgery_success'))} | {pct(r.get('fresh_keys_forgery_success_one_key_rule'))} |")
    imp = res["imprinting"]
    steps = sorted({int(k) for name, r in imp.items() if isinstance(r, dict) for k in r.get("by_steps", {})})
    out += ["", "| imprinting (PSNR >= 30 dB) | " + " | ".join(f"{k} steps" for k in steps) + " | s / image |",
            "|---|" + "---|" * (len(steps) + 1)]
    for name, r in imp.items():
        if not isinstance(r, dict):
            continue
        cell = "success" if name != "removal" else "tpr"
        label = name if name != "removal" else "removal (TPR left)"
        out.append(f"| {label} | " + " | ".join(pct(r["by_steps"][str(k)][cell]) if str(k) in r["by_steps"]
                                               else pct(r["by_steps"][k][cell]) for k in steps)
                   + f" | {r['seconds_per_image']} |")
    thresholds = [k for k in next(iter(res["consistency"].values())) if k.startswith("kept at")]
    out += ["", "| consistency check: share of the verified kept | verified | " + " | ".join(t.removeprefix("kept at ")
                                                                                           for t in thresholds) + " |",
            "|---|---|" + "---|" * len(thresholds)]
    for name, r in res["consistency"].items():
        out.append(f"| {name} | {pct(r['verified'])} | " + " | ".join(pct(r[t]) for t in thresholds) + " |")
    if "provenance" in res:
        out += ["", *provenance_markdown(res["provenance"])]
    return "\n".join(out)


def provenance_markdown(res: dict) -> list[str]:
    """``verify --log`` on genuine images, same-key generations and forgeries."""
    pct = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
    out = [f"| verify --log ({res['logged']} generations logged under the key) | n | watermarked | confirmed | "
           "confirmed / watermarked | turned down: seed noise | turned down: content | PSNR to the cover |",
           "|---|---|---|---|---|---|---|---|"]

    def row(name, r):
        db = f"{r['psnr']:.1f} dB" if "psnr" in r else ""
        out.append(f"| {name} | {r['n']} | {pct(r['watermarked'])} | {pct(r['confirmed'])} | "
                   f"{pct(r['confirmed_of_watermarked'])} | {pct(r.get('unmatched seed noise'))} | "
                   f"{pct(r.get('unmatched content'))} | {db} |")

    for name, r in res["genuine"].items():
        row(f"genuine, {name}", r)
    row("another generation, same key, not logged", res["same key, not logged"])
    for kind, by_steps in res["imprinting forgery"].items():
        for k, r in by_steps.items():
            row(f"imprinting forgery of {kind}, {k} steps", r)
    for m, r in res["averaging forgery"].items():
        row(f"averaging forgery, M = {m}", r)
    for floor, r in res["adaptive forger"].items():
        if isinstance(r, dict):
            row(f"adaptive forger, PSNR >= {floor} (thumbnail similarity to the source {r['similarity_to_source']:.2f})", r)
    out.append(f"\nAdaptive forger, 50 % confirmed: {res['adaptive forger']['50 %']}.")
    return out
