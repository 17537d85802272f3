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

from . import bench_report

# (label, method, fixed kwargs, scheduled): a scheduled method's run depends on its length,
# so each iteration count is its own run; the others are read off one run at checkpoints.
METHODS = [
    ("encoder", "encoder", {}, False),
    ("gradient lr0.1 cosine", "gradient", {"lr": 0.1, "schedule": "cosine"}, True),
    ("gradient lr0.01 fixed", "gradient", {"lr": 0.01, "schedule": "constant"}, False),
    ("fixed_point rho0.5", "fixed_point", {"rho": 0.5}, False),
    ("inertial_km", "inertial_km", {}, False),
    ("adam lr0.01", "adam", {"lr": 0.01}, True),
]

SD21_VAE = dict(  # stabilityai/stable-diffusion-2-1-base, vae/config.json
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    sample_size=768, scaling_factor=0.18215,
)


def nmse_db(z_hat: torch.Tensor, z: torch.Tensor) -> np.ndarray:
    z_hat, z = z_hat.float().cpu(), z.float().cpu()
    return (10 * torch.log10((z_hat - z).flatten(1).pow(2).sum(1) / z.flatten(1).pow(2).sum(1))).numpy()


def mean_ci(values: np.ndarray) -> tuple[float, float, float]:
    m = float(np.mean(values))
    if len(values) < 2:
        return m, m, m
    half = float(stats.t.ppf(0.975, len(values) - 1) * stats.sem(values))
    return m, m - half, m + half


def accuracy(n: int, iters: list[int], dtypes: list[str], gen_steps: int, seed: int, log=print,
             device: str = "cpu", checkpoint=None) -> list[dict]:
    """Ground truth z* generated in float32 on ``device``; each precision inverts x = D(z*).
    ``checkpoint(rows)`` is called after each run with the rows so far."""
    from .api import get_model
    from .generate import sample_latents

    checkpoint = checkpoint or (lambda rows: None)
    torch.set_grad_enabled(False)
    base = get_model("tiny", device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)  # honest wall times on a GPU
    z_T = torch.randn(n, *base.latent_shape(base.default_size), generator=torch.Generator().manual_seed(seed))
    z_star = torch.cat([sample_latents(base, z_T[i : i + 16], gen_steps) for i in range(0, n, 16)])
    x = torch.cat([base.decode(z_star[i : i + 16]) for i in range(0, n, 16)])
    rows = []
    for dtype in dtypes:
        model = get_model("tiny", device, dtype)
        for label, method, kwargs, scheduled in METHODS:
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
                extra = {} if method == "encoder" else {"iters": top, "callback": callback, **kwargs}
                if method == "gradient":
                    with torch.enable_grad():
                        z, record = invert_decoder(method, model.encode, model.decode, xs, **extra)
                else:
                    z, record = invert_decoder(method, model.encode, model.decode, xs, **extra)
                sync()
                seen[top] = (z, time.perf_counter() - t0)  # timed as the callback's checkpoints
                for k in checkpoints:
                    m, lo, hi = mean_ci(nmse_db(seen[k][0], z_star))
                    rows.append({"method": label, "dtype": dtype, "iters": k, "nmse_db": m, "ci95": [lo, hi],
                                 "seconds": seen[k][1], "n": n})
                    log(f"{label:22s} {dtype:8s} {k:4d} it  NMSE {m:6.1f} dB [{lo:.1f}, {hi:.1f}]  {seen[k][1]:.1f}s")
                checkpoint(rows)
    return rows


COST_SCRIPT = r"""
import json, resource, sys, time, torch
from diffusers import AutoencoderKL
from inversion import invert_decoder
cfg, method, size, iters, device, dtype = json.loads(sys.argv[1])
torch.manual_seed(0)
dtype = getattr(torch, dtype)
vae = AutoencoderKL(**cfg).to(device, dtype).eval().requires_grad_(False)
s = cfg["scaling_factor"]
encode = lambda x: vae.encode(x).latent_dist.mean * s
decode = lambda z: vae.decode(z / s).sample
x = torch.rand(1, 3, size, size, device=device, dtype=dtype) * 2 - 1
def sync():
    if device == "cuda": torch.cuda.synchronize()
def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20
base = rss_mb()  # the loaded model, before any forward pass
with torch.inference_mode():
    decode(encode(x)); sync()  # warm-up (its peak is below every method's: each runs E and D)
if device == "cuda":
    torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated() / 2**20
t0 = time.perf_counter()
if method == "floor":
    with torch.inference_mode():
        for _ in range(iters): decode(encode(x))
else:  # steady-state time per iteration: between the first and the last iteration's callback
    stamps = []
    def callback(d):
        sync(); stamps.append(time.perf_counter())
    invert_decoder(method, encode, decode, x, iters=iters, callback=callback)
sync()
sec = (time.perf_counter() - t0) / iters if method == "floor" else (stamps[-1] - stamps[0]) / (len(stamps) - 1)
peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb()
print(json.dumps({"seconds_per_iter": sec, "peak_mb_above_model": peak - base}))
"""


def cost(sizes: list[int], iters: int, device: str, dtypes: list[str], config: dict, log=print,
         checkpoint=None) -> list[dict]:
    """Each method in its own process; ``checkpoint(rows)`` after each (ratios come at the end)."""
    checkpoint = checkpoint or (lambda rows: None)
    rows = []
    for dtype in dtypes:
        for size in sizes:
            for method in ("floor", "fixed_point", "inertial_km", "adam", "gradient"):
                arg = json.dumps([config, method, size, iters, device, dtype])
                proc = subprocess.run([sys.executable, "-c", COST_SCRIPT, arg], capture_output=True, text=True)
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
    plt = bench_report.pyplot()
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


def write_partial(res: dict, out: Path) -> Path:
    return bench_report.write_partial(res, out, "inversion")


def write(res: dict, out: Path) -> list[Path]:
    return bench_report.write(res, out, "inversion", markdown, plot, "inversion_nmse_vs_time.png")
