"""``ringmark bench security``'s provenance part (issue 35): does ``verify --log`` tell a genuine
generation, edited, from a forgery that carries a genuine image's key on other content?

A generation log (SQLite, in a temporary folder) holds the watermarked images ``marked`` (one
key, as ``embed --log`` records them: ``api.logged``). Every image below goes through
``pipeline.detect`` as ``verify`` runs it, then ``provenance.check`` as ``verify --log`` does
(``Checker``); a row counts the share judged watermarked and the share judged ``confirmed``.

- genuine: ``marked`` under Tree-Ring's six attacks and the held-out edits (``bench.attacks``);
- same key: other generations under the key, not logged (the hardest unrelated content);
- imprinting forgery (``security.imprint``) of model images and photographs toward the first
  watermarked image's z_T, after each number of Adam steps;
- averaging forgery: covers + the averaged pattern of M watermarked images;
- the adaptive forger: imprinting of the source's *whole* z_T (the scheme is public, so it knows
  ``verify --log`` matches the seed's noise outside the key too: ``provenance.noise``) that also
  pulls the cover's thumbnail (``fingerprint.pixels``) toward the source image's, which it can
  compute (the scheme and the model are public; the log is not), at decreasing PSNR to the cover.
  The plain imprinting rows copy only the key's public disk, as ``bench security``'s own table
  does. ``thumbnail_forgery`` is the content test's worst case in closed form (no imprint).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..api import Generated, logged
from ..io.genlog import GenerationLog
from ..io.images import to_pil, to_tensor
from ..pipeline import Decision, detect, psnr
from ..provenance import fingerprint
from ..provenance.check import Checker, references
from ..scheme.geometry import IDENTITY, search_grid
from .attacks import ATTACKS, HELD_OUT, attack
from .security import ALPHA, imprint

ADAPTIVE_PSNR = (30.0, 25.0, 20.0, 15.0)


class LoggedVerify:
    """``verify --log`` on tensors: ``verify`` (``security.Verify``) and a log of ``marked``."""

    def __init__(self, model, verify, key, marked: torch.Tensor, folder: str | Path, seeds=None):
        """``seeds``: the ones ``marked`` were generated from (default 0, 1, ...)."""
        self.model, self.verify, self.key = model, verify, key
        self.log = GenerationLog.open(Path(folder) / "generations.sqlite")
        seeds = range(len(marked)) if seeds is None else seeds
        made = [Generated(file=f"{i:05d}.png", image_id=f"marked-{i}", sha256="", seed=int(s), prompt="",
                          key_id=key.key_id, model=key.model, watermarked=True, steps=0, guidance=None)
                for i, s in enumerate(seeds)]
        self.log.add(logged(made, marked))
        self.checker = Checker(self.log, [key], search_grid(Decision().search, key.latent_shape[-1]),
                               ALPHA, references(key.model, tuple(key.latent_shape)))

    def judge(self, x: torch.Tensor, batch: int = 32) -> dict:
        """Shares of ``x`` judged watermarked and ``confirmed``, confirmed among the watermarked, and
        the watermarked ones each test turned down (``Provenance.unmatched``)."""
        found = []
        for i in range(0, len(x), batch):
            for j, d in enumerate(detect(self.model, x[i : i + batch], [self.key], self.verify.recovery,
                                         Decision(alpha=ALPHA), nulls=self.verify.nulls, latents=True)):
                found.append(self.checker(d, x[i + j]) if d.watermarked else None)
        wm = sum(f is not None for f in found)
        confirmed = sum(f is not None and f.status == "confirmed" for f in found)
        return {"n": len(found), "watermarked": wm / len(found), "confirmed": confirmed / len(found),
                "confirmed_of_watermarked": confirmed / wm if wm else None,
                **{f"unmatched {t}": sum(f is not None and f.unmatched == t for f in found) / len(found)
                   for t in ("seed noise", "content")}}


def genuine(prov: LoggedVerify, marked: torch.Tensor, log) -> dict:
    """``marked`` under each of Tree-Ring's six attacks and the held-out edits."""
    out = {}
    for name in (*ATTACKS, *HELD_OUT):
        rng = np.random.default_rng(0)
        out[name] = prov.judge(to_tensor([attack(im, name, rng) for im in to_pil((marked + 1) / 2)]))
        log(f"provenance, genuine, {name}: {out[name]}")
    n = sum(r["n"] for r in out.values())
    shares = ("watermarked", "confirmed", "unmatched seed noise", "unmatched content")
    wm, confirmed, noise, content = (sum(r[k] * r["n"] for r in out.values()) / n for k in shares)
    out["pooled"] = {"n": n, "watermarked": wm, "confirmed": confirmed, "confirmed_of_watermarked": confirmed / wm
                     if wm else None, "unmatched seed noise": noise, "unmatched content": content}
    return out


def adaptive(model, prov: LoggedVerify, covers: torch.Tensor, source: torch.Tensor, target: torch.Tensor, steps: int,
             psnrs=ADAPTIVE_PSNR, log=print, checkpoint=lambda rows: None) -> dict:
    """The adaptive forger at each PSNR floor: imprinting toward ``target`` z_T, all of it, plus a
    pull of the cover's fingerprint toward ``source``'s (the image whose key it forges);
    ``checkpoint(rows)`` after each floor."""
    goal = fingerprint.pixels(source[:1]).numpy()
    out = {}
    for floor in psnrs:
        forged, sec = imprint(model, covers, target.expand(len(covers), -1, -1, -1), prov.verify.recovery, steps,
                              mask=None, min_psnr=floor, pull=lambda x: thumbnail_residual(x, source[:1]))
        row = prov.judge(forged[steps])
        row["similarity_to_source"] = float(np.mean([fingerprint.pixel_similarity(x, goal, [IDENTITY])[0]
                                                     for x in forged[steps]]))
        row.update(psnr=float(psnr(forged[steps], covers).mean()), seconds_per_image=round(sec, 1))
        out[f"{floor:g} dB"] = row
        log(f"provenance, adaptive forger, PSNR >= {floor:g} dB: {row}")
        checkpoint(out)
    return out


def thumbnail_residual(x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """(B,) the relative residual of each image's thumbnail against ``source``'s, as
    ``fingerprint.pixel_similarity`` measures it under the identity (differentiable)."""
    u, s = centred(fingerprint.pixels(x)), centred(fingerprint.pixels(source[:1]))
    dot, uu, ss = (u * s).sum((1, 2)), (u * u).sum((1, 2)), (s * s).sum().expand(len(x))
    return fingerprint.residual(dot, uu, ss)


def centred(thumbnails: torch.Tensor) -> torch.Tensor:
    """(B, 3 * P) -> (B, 1, P): the luminance, its mean removed."""
    t = fingerprint.luma(thumbnails.view(len(thumbnails), 3, -1))
    return t - t.mean(-1, keepdim=True)


def thumbnail_forgery(covers: torch.Tensor, source: torch.Tensor, min_psnr: float, gains: int = 512) -> torch.Tensor:
    """The largest move of each cover's thumbnail (``fingerprint.pixels``, its luminance) toward
    ``source``'s that a PSNR floor allows, in closed form: the thumbnail is linear in the pixels,
    so the cheapest perturbation is constant on each thumbnail cell, along ``LUMA`` in colour,
    and for a gain g it goes straight along ``g s - u`` (both mean-free) for as long as the
    budget e lasts, leaving ``max(0, ||g s - u|| - e)``; the gain is the one of ``gains``
    (log-spaced over ``fingerprint.GAIN``) that leaves the smallest residual as
    ``fingerprint.residual`` scales it. Clipping to the pixel range aside, no forger of the
    content test under the floor does better."""
    side = fingerprint.PIXEL_SIDE
    u, s = centred(fingerprint.pixels(covers)), centred(fingerprint.pixels(source[:1]))
    w = fingerprint.LUMA
    # RMS e over the 3 H W values, spent along w: the luminance moves by |w| sqrt(3) e per pixel
    e = 2 * 10 ** (-min_psnr / 20) * w.norm() * (3 * side * side) ** 0.5
    g = torch.logspace(np.log10(fingerprint.GAIN[0]), np.log10(fingerprint.GAIN[1]), gains)
    gap = (g[None, :, None, None] * s[:, None] - u[:, None]).flatten(2).norm(dim=-1)  # (B, G)
    left = (gap - e).clamp_min(0) / (g.clamp_min(1) * s.norm())[None]
    best = g[left.argmin(1)]
    d = best[:, None, None] * s - u  # (B, 1, P)
    d = d * (e / d.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
    colour = (d * (w / w.pow(2).sum())[None, :, None]).view(len(covers), 3, side, side)  # luminance d, least RGB
    return (covers + F.interpolate(colour, size=covers.shape[-2:], mode="nearest")).clamp(-1, 1)


def half_point(rows: dict) -> str:
    """The PSNR at which the adaptive forger's confirmed share first reaches 50 %, as measured."""
    for name, r in rows.items():
        if r["confirmed"] >= 0.5:
            return f"reached at {r['psnr']:.1f} dB"
    return f"not reached down to {min(r['psnr'] for r in rows.values()):.1f} dB"


def run(model, verify, key, marked: torch.Tensor, same_key: torch.Tensor, imprinted: dict, averaged: dict,
        covers: torch.Tensor, target: torch.Tensor, adaptive_steps: int, log, psnrs=None,
        checkpoint=lambda part: None) -> dict:
    """The provenance table of one ``bench security`` run. ``imprinted``: {cover kind: {steps:
    images}}; ``averaged``: {M: forged images}; ``psnrs``: the adaptive forger's floors (default
    ``ADAPTIVE_PSNR``); ``checkpoint(res)`` after each row, so a stopped run
    keeps what it measured (each adaptive floor takes minutes an image)."""
    with tempfile.TemporaryDirectory() as tmp:
        prov = LoggedVerify(model, verify, key, marked, tmp)
        res = {"logged": len(marked), "genuine": genuine(prov, marked, log)}
        res["same key, not logged"] = prov.judge(same_key)
        log(f"provenance, same key: {res['same key, not logged']}")
        res["imprinting forgery"] = {kind: {str(k): {**prov.judge(im), "psnr": float(psnr(im, c).mean())}
                                            for k, im in by_steps.items()}
                                     for kind, (c, by_steps) in imprinted.items()}
        log(f"provenance, imprinting: {res['imprinting forgery']}")
        res["averaging forgery"] = {str(m): prov.judge(f) for m, f in averaged.items()}
        log(f"provenance, averaging: {res['averaging forgery']}")
        checkpoint(res)
        res["adaptive forger"] = adaptive(model, prov, covers, marked[:1], target, adaptive_steps,
                                          psnrs=psnrs or ADAPTIVE_PSNR, log=log,
                                          checkpoint=lambda rows: checkpoint({**res, "adaptive forger": rows}))
        res["adaptive forger"]["50 %"] = half_point(res["adaptive forger"])
        prov.log.close()
    return res
