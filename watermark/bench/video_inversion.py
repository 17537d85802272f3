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


def fits(rows: list[dict], size: int, budget_mb: float = BUDGET_MB) -> dict:
    """Per method: peak MB = intercept + slope x frames (least squares over the measured clips), and
    the frames that fit in ``budget_mb`` at the measured size and, scaling the per-frame slope by
    the pixel count (activations grow with pixels; the intercept kept), at Wan's 480x832."""
    out = {}
    for method in METHODS:
        pts = [(r["frames"], r["peak_mb_above_model"]) for r in rows if r["method"] == method and "error" not in r]
        if len(pts) < 2 or method == "floor":
            continue
        slope, intercept = np.polyfit(*zip(*pts), 1)
        wide = slope * WIDE[0] * WIDE[1] / size**2
        out[method] = {"mb_per_frame": float(slope), "mb_fixed": float(intercept),
                       "frames_in_budget": _frames(budget_mb, intercept, slope),
                       "frames_in_budget_480x832": _frames(budget_mb, intercept, wide)}
    return out


def _frames(budget: float, intercept: float, slope: float) -> int | None:
    """Frames under the budget on the line (None: the slope is not positive, no limit was seen)."""
    return int((budget - intercept) // slope) if slope > 0 else None


def markdown(rows: list[dict], fit: dict) -> list[str]:
    lines = ["Cost on Wan 2.1's video VAE architecture (random weights), batch 1, each method and clip in its own "
             "process:", "", "| method | frames | size | s / iteration | × gradient | peak MB above model | "
             "memory × gradient |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['frames']} | {r['size']} | {r['error']} ||||")
            continue
        lines.append(f"| {r['method']} | {r['frames']} | {r['size']} | {r['seconds_per_iter']:.2f} | "
                     f"{r.get('time_vs_gradient', float('nan')):.2f} | {r['peak_mb_above_model']:.0f} | "
                     f"{r.get('memory_vs_gradient', float('nan')):.3f} |")
    if fit:
        lines += ["", "Frames in 24 GB, from a line through peak memory against frames (480×832: the per-frame "
                  "slope scaled by the pixel count, an extrapolation):", "",
                  "| method | MB per frame | MB fixed | frames in 24 GB at this size | at 480×832 |", "|---|---|---|---|---|"]
        for method, f in fit.items():
            lines.append(f"| {method} | {f['mb_per_frame']:.1f} | {f['mb_fixed']:.0f} | {_show(f['frames_in_budget'])} | "
                         f"{_show(f['frames_in_budget_480x832'])} |")
    return lines + [""]


def _show(frames: int | None) -> str:
    return "no limit seen" if frames is None else str(frames)


def main(frames: list[int], size: int, iters: int, device: str, dtype: str, quick: bool, outdir, log) -> str:
    """Run, write inversion_video.json/.md into ``outdir`` (a partial file after each process), return the markdown."""
    import time
    from pathlib import Path

    from . import report

    if quick:
        frames, size, iters = [1, 5], 32, 2
    dev = report.bench_device(device)
    if dtype == "float16" and dev != "cuda":
        raise ValueError("float16 needs a CUDA device (CPU: float32, bfloat16)")
    out = Path(outdir)
    res = {"command": "ringmark bench inversion " + " ".join(sys.argv[3:]), "machine": report.machine(dev),
           "date": time.strftime("%Y-%m-%d"), "vae": WAN21_VAE, "iters": iters}
    res["cost"] = cost(frames, size, iters, dev, dtype, log=log,
                       checkpoint=lambda rows: report.write_partial({**res, "cost": rows}, out, "inversion_video"))
    res["fits"] = fits(res["cost"], size)
    text = lambda r: "\n".join([f"{r['machine']}; {r['date']}; command: `{r['command']}`", ""]  # noqa: E731
                               + markdown(r["cost"], r["fits"]))
    for f in report.write(res, out, stem="inversion_video", markdown=text, plot=lambda r, p: False, plot_name=""):
        log(f"wrote {f}")
    return text(res)
