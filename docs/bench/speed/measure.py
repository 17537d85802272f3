"""Issue 26, item 3: what one gradient-free iteration costs, E(D(z)), on this machine, as the
networks are run: float32 (ringmark's default), channels-last memory format, bfloat16, and
torch.compile (inductor), and the batch split into chunks of 1, 2, 4 or 8 images (by hand, or by
diffusers' ``enable_slicing``), on `tiny`'s VAE (64 px) and SD 2.1's VAE architecture (random weights,
256 px; cost does not depend on the weights). Each variant is timed after warm-up, median of
--repeats runs; the compile time is reported apart. The max abs change of E(D(z)) against float32
says whether a variant keeps the methods' contract.

    python docs/bench/speed/measure.py           # writes docs/bench/speed/cpu.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from watermark import get_model
from watermark.bench.inversion import SD21_VAE

VARIANTS = ("float32", "chunks of 1", "chunks of 2", "chunks of 4", "chunks of 8", "enable_slicing", "channels_last",
            "chunks of 2 + channels_last", "bfloat16", "compile")  # the last but two: what ringmark does on a CPU


def networks(name: str):
    """(vae, scale, batch, latent shape) of one of the two VAEs."""
    if name == "tiny":
        model = get_model("tiny")
        return model.vae, model.vae.config.scaling_factor, 32, model.latent_shape(model.default_size)
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**SD21_VAE).eval().requires_grad_(False)
    return vae, SD21_VAE["scaling_factor"], 1, (SD21_VAE["latent_channels"], 32, 32)  # 256 px


def variant(vae, scale: float, how: str):
    """The E(D(.)) of one variant, and its dtype."""
    dtype = torch.bfloat16 if how == "bfloat16" else torch.float32
    v = vae.to(dtype)
    if "channels_last" in how:
        v = v.to(memory_format=torch.channels_last)
    enc = lambda x: v.encode(x).latent_dist.mean * scale  # noqa: E731
    dec = lambda z: v.decode(z / scale).sample  # noqa: E731
    if how == "enable_slicing":  # diffusers' own: the batch one image at a time
        v.enable_slicing()
    if how == "compile":
        enc, dec = torch.compile(enc), torch.compile(dec)
    if how.startswith("chunks of"):  # the batch through the networks a few images at a time
        n = int(how.split()[2])
        return (lambda z: torch.cat([enc(dec(c)) for c in z.split(n)]).float()), dtype
    return (lambda z: enc(dec(z.to(dtype))).float()), dtype


@torch.inference_mode()
def run(name: str, repeats: int, variants: list[str]) -> list[dict]:
    vae, scale, batch, shape = networks(name)
    z = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))
    rows, ref = [], None
    for how in variants:
        vae = vae.to(torch.float32, memory_format=torch.contiguous_format)
        vae.disable_slicing()
        f, _ = variant(vae, scale, how)
        t0 = time.perf_counter()
        out = f(z)  # warm-up (and compilation)
        first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            f(z)
            times.append(time.perf_counter() - t0)
        ref = out if ref is None else ref
        row = {"vae": name, "variant": how, "batch": batch, "latent_shape": list(shape), "seconds_per_iter": statistics.median(times),
               "first_call_seconds": first, "max_abs_change_vs_float32": float((out - ref).abs().max())}
        row["vs_float32"] = row["seconds_per_iter"] / rows[0]["seconds_per_iter"] if rows else 1.0
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--vaes", default="tiny,sd21")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("-o", default=str(Path(__file__).parent / "cpu.json"))
    args = parser.parse_args()
    res = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
           "command": "python docs/bench/speed/measure.py " + " ".join(sys.argv[1:]),
           "rows": [r for name in args.vaes.split(",") for r in run(name, args.repeats, args.variants.split(","))]}
    Path(args.o).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
