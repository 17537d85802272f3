"""``ringmark bench detect --video``: clip-level detection under the edits a clip meets on its way
(issue 38), through the path users run: each clip is written to an MP4 after the edit
(``video_attacks.attack_clip``), read back and tested by ``api.verify``, every default but the
recovery where one is given.

Clip i of the watermarked set comes from seed FIRST+i and carries key i; clean clip i comes from
the same seed without a key and is tested against key i. Per edit: TPR at alpha (the clip test's
p-value is exact, docs/concepts/video.md: no threshold tuned), the clean clips flagged at alpha
with a two-sided binomial test against alpha, AUC and TPR at an empirical 1 % FPR.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from .. import api
from ..models import get_model
from ..recovery import Recovery
from ..scheme.embedding import watermarked_latents
from ..scheme.keys import new_key
from .detect import auc, tpr_at_fpr
from .video_attacks import VIDEO_ATTACKS, attack_clip

ALPHA = 0.01


def run(model_name: str = "tiny-video", n: int = 100, frames: int | None = None, size: int | None = None,
        steps: int = 50, attacks=VIDEO_ATTACKS, recovery: Recovery = Recovery(), seed: int = 20261204,
        first: int = 9 * 10**9, device: str = "cpu", log=print) -> dict:
    """p-values of n watermarked and n clean clips after each attack, and their summary."""
    model = get_model(model_name, device)
    size = size or model.default_size
    frames = frames or model.default_frames
    latent_frames = model.latent_frames(frames)
    shape = model.latent_shape(size)
    p = {kind: {a: [] for a in attacks} for kind in ("watermarked", "clean")}
    t_gen = t_verify = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        for i in range(n):
            key = new_key(model_name, shape, seed=seed + i)
            for kind in p:
                t0 = time.perf_counter()
                z_T = watermarked_latents(key, seeds=[first + i], frames=latent_frames, watermark=kind == "watermarked")
                clip = model.generate(z_T, steps)[0]
                t1 = time.perf_counter()
                for a in attacks:
                    attack_clip(clip, a, path)
                    result = api.verify([str(path)], [key], recovery, alpha=ALPHA, device=device)[0]
                    if result.error:
                        raise RuntimeError(f"clip {i} after {a}: {result.error}")
                    p[kind][a].append(result.p_value)
                t_gen, t_verify = t_gen + t1 - t0, t_verify + time.perf_counter() - t1
            if (i + 1) % 10 == 0 or i + 1 == n:
                log(f"{i + 1}/{n} clips: " + ", ".join(
                    f"{a} {np.mean(np.array(p['watermarked'][a]) <= ALPHA):.2f}" for a in attacks))
    return {"model": model_name, "n": n, "frames": frames, "size": size, "gen_steps": steps, "alpha": ALPHA,
            "recovery": recovery.for_model(model.default_recovery).label, "first_seed": first, "key_seed": seed,
            "seconds_per_clip": {"generate": t_gen / (2 * n), "attack_and_verify": t_verify / (2 * n * len(attacks))},
            "rows": summary(p), "p_values": p}


def summary(p: dict) -> dict:
    """Per attack, from the p-values of the watermarked and the clean clips (``run``'s ``p_values``)."""
    rows = {}
    for a in p["watermarked"]:
        wm, clean = np.array(p["watermarked"][a]), np.array(p["clean"][a])
        flagged = int((clean <= ALPHA).sum())
        rows[a] = {"tpr_at_alpha": float((wm <= ALPHA).mean()), "clean_flagged": flagged,
                   "fpr_at_alpha": flagged / len(clean),
                   "binomial_p": float(stats.binomtest(flagged, len(clean), ALPHA).pvalue),
                   "auc": auc(wm, clean), "tpr_at_1pct_fpr": tpr_at_fpr(wm, clean),
                   "median_p_watermarked": float(np.median(wm))}
    return rows


def markdown(res: dict) -> str:
    lines = [f"# Clip-level detection: {res['model']}, {res['n']} watermarked + {res['n']} clean clips",
             "", f"{res['command']}", "", f"{res['machine']}, {res['date']}; {res['frames']} frames of {res['size']} px, "
             f"{res['gen_steps']} generation steps; recovery: {res['recovery']}; alpha = {res['alpha']}.", "",
             "| edit | TPR at alpha | clean flagged (binomial p) | AUC | TPR at 1 % FPR | median p (watermarked) |",
             "|---|---|---|---|---|---|"]
    for a, r in res["rows"].items():
        lines.append(f"| {a} | {r['tpr_at_alpha']:.2f} | {r['clean_flagged']}/{res['n']} ({r['binomial_p']:.2f}) | "
                     f"{r['auc']:.3f} | {r['tpr_at_1pct_fpr']:.2f} | {r['median_p_watermarked']:.1e} |")
    s = res["seconds_per_clip"]
    lines += ["", f"Seconds per clip: generation {s['generate']:.1f}, each edit's write + verify {s['attack_and_verify']:.1f}."]
    return "\n".join(lines) + "\n"


def main(model_name: str, n: int, frames: int | None, size: int | None, steps: int, attacks, recovery: Recovery,
         outdir: Path, command: str, device: str = "cpu", log=print) -> str:
    res = run(model_name, n, frames, size, steps, attacks, recovery, device=device, log=log)
    res.update(command=command, date=time.strftime("%Y-%m-%d"),
               machine=f"{platform.machine()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "detect_video.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    (outdir / "detect_video.md").write_text(text)
    return text
