"""One cost run of ``bench inversion``, in a process of its own so that its peak memory is its own:

    python -m watermark.bench.cost_worker '[config, method, size, iters, device, dtype, frames]'

prints {"seconds_per_iter", "peak_mb_above_model"} as one JSON line. ``method`` "floor" times one
decoder plus one encoder forward; the others are ``inversion`` methods on a VAE architecture with
random weights (cost does not depend on the weights): SD 2.1's ``AutoencoderKL`` by default, or the
diffusers class ``config["_class_name"]`` names (a video VAE: ``frames`` frames, (1, 3, F, H, W); with
``config["_per_frame"]``, a 2D VAE on a clip of ``frames`` frames as one batch, (F, 3, H, W)).
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from inversion import invert_decoder


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(config: dict, method: str, size: int, iters: int, device: str, dtype: str, frames: int | None = None) -> dict:
    import diffusers

    torch.manual_seed(0)
    dtype = getattr(torch, dtype)
    config = dict(config)
    cls = getattr(diffusers, config.pop("_class_name", "AutoencoderKL"))
    per_frame = config.pop("_per_frame", False)  # a 2D VAE applied frame by frame: the frames are a batch
    vae = cls(**config).to(device, dtype).eval().requires_grad_(False)
    s = config.get("scaling_factor", 1.0)

    def encode(x):
        return vae.encode(x).latent_dist.mean * s

    def decode(z):
        return vae.decode(z / s).sample

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    shape = (1, 3, size, size) if frames is None else (frames, 3, size, size) if per_frame else (1, 3, frames, size, size)
    x = torch.rand(*shape, device=device, dtype=dtype) * 2 - 1
    base = rss_mb()  # the loaded model, before any forward pass
    with torch.inference_mode():
        decode(encode(x))  # warm-up (its peak is below every method's: each runs E and D)
        sync()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    t0 = time.perf_counter()
    if method == "floor":
        with torch.inference_mode():
            for _ in range(iters):
                decode(encode(x))
        sync()
        seconds = (time.perf_counter() - t0) / iters
    else:  # steady state: between the first and the last iteration's callback
        stamps = []

        def callback(d):
            sync()
            stamps.append(time.perf_counter())

        if method == "reference":  # the seed paper's decoder_inv_nograd as written (bench/reference.py)
            from .reference import Reference

            Reference(vae).decoder_inv_nograd(x.float(), num_steps=iters, callback=lambda i, z: callback(z))
        else:
            invert_decoder(method, encode, decode, x, iters=iters, callback=callback)
        seconds = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    return {"seconds_per_iter": seconds, "peak_mb_above_model": peak_mb(device) - base}


if __name__ == "__main__":
    print(json.dumps(measure(*json.loads(sys.argv[1]))))
