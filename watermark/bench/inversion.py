"""``ringmark bench inversion``: the seed paper's Fig. 3 / Table S1 on what this machine runs.

Accuracy: NMSE of z on latents the bundled model generated (x = D(z*)), per method, iteration
count and precision. Cost: time per iteration and peak memory on Stable Diffusion 2.1's VAE
architecture (randomly initialised: cost does not depend on the weights), each method in its
own process, against the floor of one decoder plus one encoder forward.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from inversion import invert_decoder

from ..models import get_model
from . import report
from .side_by_side import markdown as side_by_side_markdown
from .side_by_side import side_by_side

# (label, method, fixed kwargs, scheduled): a scheduled method's run depends on its length,
# so each iteration count is its own run; the others are read off one run at checkpoints.
RUNS = [
    ("encoder", "encoder", {}, False),
    ("gradient lr0.1 cosine", "gradient", {"lr": 0.1, "schedule": "cosine"}, True),
    ("gradient lr0.01 fixed", "gradient", {"lr": 0.01, "schedule": "constant"}, False),
    ("fixed_point rho0.5", "fixed_point", {"rho": 0.5}, False),
    ("inertial_km", "inertial_km", {}, False),
    ("adam lr0.01", "adam", {"lr": 0.01}, True),
    ("anderson rho0.5", "anderson", {"rho": 0.5}, False),
]

SD21_VAE = dict(  # stabilityai/stable-diffusion-2-1-base, vae/config.json
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215,
)


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    m = float(np.mean(values))
    if len(values) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return m, m - half, m + half


@torch.no_grad()  # restores the caller's grad mode; the gradient method turns it on for itself
def accuracy(n: int, iters: list[int], dtypes: list[str], gen_steps: int, seed: int, log=print,
             device: str = "cpu", checkpoint=None) -> list[dict]:
    """Ground truth z* generated in float32 on ``device``; each precision inverts x = D(z*).
    ``checkpoint(rows)`` is called after each run with the rows so far."""
    checkpoint = checkpoint or (lambda rows: None)
    base = get_model("tiny", device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # honest wall times on a GPU
    z_T = torch.randn(n, *base.latent_shape(base.default_size), generator=torch.Generator().manual_seed(seed))
    z_star = torch.cat([base.sample(z_T[i : i + 16], gen_steps) for i in range(0, n, 16)])
    x = torch.cat([base.decode(z_star[i : i + 16]) for i in range(0, n, 16)])
    rows = []
    for dtype in dtypes:
        model = get_model("tiny", device, dtype)
        for label, method, kwargs, scheduled in RUNS:
            runs = [[k] for k in iters] if scheduled else [iters]
            if method == "encoder":
                runs = [[0]]
            for checkpoints in runs:
                top = max(checkpoints)
                sync()
                seen, t0 = {}, time.perf_counter()

                def callback(d, seen=seen, t0=t0, checkpoints=checkpoints):
                    if d["i"] in checkpoints:
                        sync()
                        seen[d["i"]] = (d["z"].clone(), time.perf_counter() - t0)

                xs = x.to(getattr(torch, dtype))
                extra = {"iters": top, "callback": callback, **kwargs}
                z, record = invert_decoder(method, model.encode, model.decode, xs, **extra)
                sync()
                seen[top] = (z, time.perf_counter() - t0)  # timed as the callback's checkpoints
                for k in checkpoints:
                    m, lo, hi = mean_ci(report.nmse_db(seen[k][0], z_star).numpy())
                    rows.append({"method": label, "dtype": dtype, "iters": k, "nmse_db": m, "ci95": [lo, hi],
                                 "seconds": seen[k][1], "n": n})
                    log(f"{label:22s} {dtype:8s} {k:4d} it  NMSE {m:6.1f} dB [{lo:.1f}, {hi:.1f}]  {seen[k][1]:.1f}s")
                checkpoint(rows)
    return rows


def cost(sizes: list[int], iters: int, device: str, dtypes: list[str], config: dict, log=print,
         checkpoint=None) -> list[dict]:
    """Each method in its own process; ``checkpoint(rows)`` after each (ratios come at the end)."""
    checkpoint = checkpoint or (lambda rows: None)
    rows = []
    for dtype in dtypes:
        for size in sizes:
            for method in ("floor", "fixed_point", "inertial_km", "adam", "anderson", "reference", "gradient"):
                arg = json.dumps([config, method, size, iters, device, dtype])
                proc = subprocess.run([sys.executable, "-m", "watermark.bench.cost_worker", arg], capture_output=True,
                                      text=True)
                if proc.returncode != 0:
                    err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
                    rows.append({"method": method, "size": size, "dtype": dtype, "device": device, "error": err})
                    log(f"cost {method} {size}px {dtype}: {err}")
                    checkpoint(rows)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append({"method": method, "size": size, "dtype": dtype, "device": device, **r})
                log(f"cost {method:12s} {size}px {dtype:8s} {r['seconds_per_iter']:.3f} s/it  "
                    f"peak +{r['peak_mb_above_model']:.0f} MB")
                checkpoint(rows)
    for r in rows:  # ratios to the floor of the same size and dtype
        floor = next((f for f in rows if f["method"] == "floor" and f["size"] == r["size"]
                      and f["dtype"] == r["dtype"] and "error" not in f), None)
        grad = next((g for g in rows if g["method"] == "gradient" and g["size"] == r["size"]
                     and g["dtype"] == r["dtype"] and "error" not in g), None)
        if floor and "error" not in r:
            r["time_vs_floor"] = r["seconds_per_iter"] / floor["seconds_per_iter"]
        if grad and "error" not in r:
            r["time_vs_gradient"] = r["seconds_per_iter"] / grad["seconds_per_iter"]
            r["memory_vs_gradient"] = r["peak_mb_above_model"] / max(grad["peak_mb_above_model"], 1e-9)
    return rows


def markdown(res: dict) -> str:
    lines = [f"{res['machine']}; {res['date']}; command: `{res['command']}`", ""]
    if res["accuracy"]:
        lines += [f"Accuracy on the bundled model: NMSE (dB) of z, mean [95% CI] over {res['n']} generated latents "
                  "(x = D(z*)), and wall time for the batch.", "",
                  "| method | dtype | iterations | NMSE dB | 95% CI | seconds |", "|---|---|---|---|---|---|"]
        for r in res["accuracy"]:
            lines.append(f"| {r['method']} | {r['dtype']} | {r['iters']} | {r['nmse_db']:.1f} | "
                         f"[{r['ci95'][0]:.1f}, {r['ci95'][1]:.1f}] | {r['seconds']:.1f} |")
        lines.append("")
    if res.get("side_by_side"):
        lines += side_by_side_markdown(res["side_by_side"])
    if res["cost"]:
        lines += ["Cost on SD 2.1's VAE architecture (random weights), batch 1, each method in its own process:", "",
                  "| method | size | dtype | device | s / iteration | × floor | × gradient | peak MB above model | "
                  "memory × gradient |", "|---|---|---|---|---|---|---|---|---|"]
        for r in res["cost"]:
            if "error" in r:
                lines.append(f"| {r['method']} | {r['size']} | {r['dtype']} | {r['device']} | {r['error']} |||||")
                continue
            lines.append(f"| {r['method']} | {r['size']} | {r['dtype']} | {r['device']} | {r['seconds_per_iter']:.3f} | "
                         f"{r.get('time_vs_floor', float('nan')):.2f} | {r.get('time_vs_gradient', float('nan')):.2f} | "
                         f"{r['peak_mb_above_model']:.0f} | {r.get('memory_vs_gradient', float('nan')):.2f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> bool:
    plt = report.pyplot()
    if plt is None or not res["accuracy"]:  # a --skip-accuracy run has nothing to plot
        return False
    dtypes = sorted({r["dtype"] for r in res["accuracy"]})
    fig, axes = plt.subplots(1, len(dtypes), figsize=(6 * len(dtypes), 4.5), squeeze=False)
    for ax, dtype in zip(axes[0], dtypes):
        for label in dict.fromkeys(r["method"] for r in res["accuracy"]):
            pts = sorted((r["seconds"], r["nmse_db"]) for r in res["accuracy"]
                         if r["method"] == label and r["dtype"] == dtype)
            ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(title=f"NMSE vs time, {dtype}, n={res['n']}", xlabel="seconds (batch)", ylabel="NMSE (dB)",
               xscale="log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True



def main(n: int, iters: list[int], dtypes: list[str], cost_sizes: list[int], cost_iters: int, device: str,
         skip_accuracy: bool, skip_cost: bool, quick: bool, outdir: Path, log, dtypes_given: bool = True,
         skip_reference: bool = False) -> str:
    """``ringmark bench inversion``: run, write inversion.json/.md/.png into ``outdir``, return the markdown.
    On CUDA, float16 joins the precisions unless ``dtypes`` was given."""
    if quick:
        n, iters, cost_sizes, cost_iters, dtypes = 4, [2, 5], [64], 2, dtypes[:1]
    dev = report.bench_device(device)
    if dev == "cuda" and not dtypes_given:
        dtypes = dtypes + ["float16"]
    elif dev != "cuda" and "float16" in dtypes:
        raise ValueError("float16 needs a CUDA device (CPU: float32, bfloat16)")
    res = {"command": "ringmark bench inversion " + " ".join(sys.argv[3:]), "machine": report.machine(dev),
           "date": time.strftime("%Y-%m-%d"), "n": n, "accuracy": [], "cost": [], "side_by_side": []}
    out = Path(outdir)
    if not skip_accuracy:
        res["accuracy"] = accuracy(n, iters, dtypes, gen_steps=10 if quick else 50, seed=20241127, log=log, device=dev,
                                   checkpoint=lambda rows: report.write_partial({**res, "accuracy": rows}, out, "inversion"))
    if not skip_reference:
        for name in ("tiny",) if quick else ("tiny", "tiny-sd"):
            res["side_by_side"].append(side_by_side(name, n, gen_steps=10 if quick else 50, seed=20241127,
                                                    max_iters=5 if quick else 50, log=log))
            report.write_partial(res, out, "inversion")
    if not skip_cost:
        res["cost"] = cost(cost_sizes, cost_iters, device=dev, dtypes=dtypes, config=dict(SD21_VAE), log=log,
                           checkpoint=lambda rows: report.write_partial({**res, "cost": rows}, out, "inversion"))
    for f in report.write(res, out, stem="inversion", markdown=markdown, plot=plot, plot_name="inversion_nmse_vs_time.png"):
        log(f"wrote {f}")
    return markdown(res)
