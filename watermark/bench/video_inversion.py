"""``ringmark bench inversion --video``: the seed paper's video claim on what this machine runs.

Hong et al. (NeurIPS 2024) invert the decoder of video LDMs without backpropagation because the
gradient method does not fit: "GPUs with 24 GB memory can only perform gradient-based decoder
inversion for 4 frames" (LaVie: 64.7 GB gradient-based against 7.13 GB gradient-free). Here each
method runs in its own process (``cost_worker``) on a video VAE architecture with random weights
(cost does not depend on the weights) for a growing number of frames, side by side in one run:
peak memory above the loaded model and seconds per iteration, and, from a straight line through
peak memory against frames, how many frames each method fits in 24 GB.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

# Wan-AI/Wan2.1-T2V-1.3B-Diffusers, vae/config.json: a causal 3D VAE, 8x spatial and 4x temporal
# compression (a clip of 1 + 4k frames has 1 + k latent frames), decoded one latent frame at a time
# with a cache of the causal convolutions' past.
WAN21_VAE = dict(_class_name="AutoencoderKLWan", base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                 attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
METHODS = ("floor", "fixed_point", "adam", "gradient")  # floor: one encoder plus one decoder forward
BUDGET_MB = 24 * 1024  # the paper's 24 GB GPU
WIDE = (480, 832)  # Wan 2.1's 480p clips, for the extrapolation


WAN_TITLE = "Cost on Wan 2.1's video VAE architecture (random weights), batch 1, each method and clip in its own process:"
PER_FRAME_TITLE = ("Cost with `tiny`'s 2D VAE architecture frame by frame (the clip one batch, as LaVie decodes with "
                   "SD's), 128 px, each method and clip in its own process:")


def cost(frames: list[int], size: int, iters: int, device: str, dtype: str, config: dict = WAN21_VAE, log=print,
         checkpoint=None) -> list[dict]:
    """Each (frames, method) in its own process; ``checkpoint(rows)`` after each."""
    checkpoint = checkpoint or (lambda rows: None)
    rows = []
    for f in frames:
        for method in METHODS:
            arg = json.dumps([config, method, size, iters, device, dtype, f])
            proc = subprocess.run([sys.executable, "-m", "watermark.bench.cost_worker", arg], capture_output=True,
                                  text=True)
            row = {"method": method, "frames": f, "size": size, "dtype": dtype, "device": device}
            if proc.returncode != 0:
                row["error"] = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                log(f"video cost {method} {f} frames: {row['error']}")
            else:
                row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
                log(f"video cost {method:12s} {f:3d} frames {size}px {row['seconds_per_iter']:.2f} s/it  "
                    f"peak +{row['peak_mb_above_model']:.0f} MB")
            rows.append(row)
            checkpoint(rows)
    for r in rows:  # against the gradient method on the same clip
        grad = next((g for g in rows if g["method"] == "gradient" and g["frames"] == r["frames"] and "error" not in g), None)
        if grad and "error" not in r:
            r["time_vs_gradient"] = r["seconds_per_iter"] / grad["seconds_per_iter"]
            r["memory_vs_gradient"] = r["peak_mb_above_model"] / max(grad["peak_mb_above_model"], 1e-9)
    return rows


def fits(rows: list[dict], budget_mb: float = BUDGET_MB) -> dict:
    """Per method, from peak MB above the model: at each measured size, a line against frames
    (least squares) and the frames that fit in ``budget_mb``; with two sizes or more, the model
    peak = c + pixels x (a + b x frames), fitted over all of them, and the frames that fit at
    Wan's 480x832 by it (an extrapolation: activations grow with pixels, c does not)."""
    out = {}
    for method in METHODS:
        if method == "floor":
            continue
        mine = [r for r in rows if r["method"] == method and "error" not in r]
        by_size = {}
        for size in sorted({r["size"] for r in mine}):
            pts = [(r["frames"], r["peak_mb_above_model"]) for r in mine if r["size"] == size]
            if len(pts) >= 2:
                slope, intercept = np.polyfit(*zip(*pts), 1)
                by_size[size] = {"mb_per_frame": float(slope), "mb_fixed": float(intercept),
                                 "frames_in_budget": _frames(budget_mb - intercept, slope)}
        if not by_size:
            continue
        out[method] = {"by_size": by_size, "frames_in_budget_480x832": None}
        if len({r["size"] for r in mine}) >= 2:
            px = np.array([r["size"] ** 2 for r in mine], dtype=float)
            f = np.array([r["frames"] for r in mine], dtype=float)
            design = np.stack([np.ones_like(px), px, px * f], 1)
            (c, a, b), *_ = np.linalg.lstsq(design, np.array([r["peak_mb_above_model"] for r in mine]), rcond=None)
            wide = WIDE[0] * WIDE[1]
            out[method].update(model={"mb_constant": float(c), "mb_per_pixel": float(a), "mb_per_pixel_frame": float(b)},
                               frames_in_budget_480x832=_frames(budget_mb - c - wide * a, wide * b))
    return out


def _frames(room: float, per_frame: float) -> int | None:
    """Frames that fit in ``room`` MB at ``per_frame`` MB each (None: no growth with frames seen)."""
    return max(0, int(room // per_frame)) if per_frame > 1e-3 else None  # below 1 kB a frame: rounding, not growth


def markdown(rows: list[dict], fit: dict, title: str = WAN_TITLE) -> list[str]:
    lines = [title, "", "| method | frames | size | s / iteration | × gradient | peak MB above model | "
             "memory × gradient |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['frames']} | {r['size']} | {r['error']} ||||")
            continue
        lines.append(f"| {r['method']} | {r['frames']} | {r['size']} | {r['seconds_per_iter']:.2f} | "
                     f"{r.get('time_vs_gradient', float('nan')):.2f} | {r['peak_mb_above_model']:.0f} | "
                     f"{r.get('memory_vs_gradient', float('nan')):.3f} |")
    if fit:
        lines += ["", "Frames in 24 GB, from a line through peak memory against frames at each size; at 480×832, "
                  "from peak = c + pixels × (a + b × frames) fitted over the sizes measured (an extrapolation):", "",
                  "| method | size | MB per frame | MB fixed | frames in 24 GB | at 480×832 |", "|---|---|---|---|---|---|"]
        for method, f in fit.items():
            for size, g in f["by_size"].items():
                lines.append(f"| {method} | {size} | {g['mb_per_frame']:.1f} | {g['mb_fixed']:.0f} | "
                             f"{_show(g['frames_in_budget'])} | "
                             f"{_show(f['frames_in_budget_480x832'], 'no limit seen' if 'model' in f else 'one size only')} |")
    return lines + [""]


def _show(frames: int | None, none: str = "no limit seen") -> str:
    return none if frames is None else str(frames)


def main(frames: list[int], sizes: list[int], iters: int, device: str, dtype: str, quick: bool, outdir, log,
         accuracy_frames: int = 0, skip_cost: bool = False) -> str:
    """Run, write inversion_video.json/.md into ``outdir`` (a partial file after each process), return the markdown.
    ``accuracy_frames``: also, with ``tiny``'s VAE frame by frame (``video_accuracy``), the cost
    against ``frames`` and the time to the gradient method's NMSE on a clip of that many frames;
    0: not run. ``skip_cost``: not Wan's cost."""
    import time
    from pathlib import Path

    from . import report, video_accuracy

    short = {}  # video_accuracy's own budgets unless quick
    if quick:
        frames, sizes, iters = [1, 5], [32], 2
        accuracy_frames, short = min(accuracy_frames, 2), {"budgets": (2, 4), "free_iters": 4}
    dev = report.bench_device(device)
    if dtype == "float16" and dev != "cuda":
        raise ValueError("float16 needs a CUDA device (CPU: float32, bfloat16)")
    out = Path(outdir)
    res = {"command": "ringmark bench inversion " + " ".join(sys.argv[3:]), "machine": report.machine(dev),
           "date": time.strftime("%Y-%m-%d"), "vae": WAN21_VAE, "iters": iters}
    res["cost"] = []
    for size in [] if skip_cost else sizes:
        done = list(res["cost"])
        res["cost"] = done + cost(frames, size, iters, dev, dtype, log=log, checkpoint=lambda rows: report.write_partial(
            {**res, "cost": done + rows}, out, "inversion_video"))
    res["fits"] = fits(res["cost"])
    if accuracy_frames:
        res["per_frame_cost"] = video_accuracy.per_frame_cost(frames, iters, dev, dtype, log=log)
        res["accuracy"] = video_accuracy.accuracy(accuracy_frames, device=dev, log=log, **short)
    text = lambda r: "\n".join(  # noqa: E731
        [f"{r['machine']}; {r['date']}; command: `{r['command']}`", ""]
        + (markdown(r["cost"], r["fits"]) if r["cost"] else [])
        + (markdown(r["per_frame_cost"], {}, PER_FRAME_TITLE) + video_accuracy.markdown(r["accuracy"])
           if "accuracy" in r else []))
    for f in report.write(res, out, stem="inversion_video", markdown=text, plot=lambda r, p: False, plot_name=""):
        log(f"wrote {f}")
    return text(res)
