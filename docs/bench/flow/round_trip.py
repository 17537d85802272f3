"""tiny-flow: sample z_T -> z_0 with 20 Euler steps, invert 20 steps, naive and exact (5 fixed-point
iterations per step); NMSE of the recovered z_T (dB), mean over 32 latents. Prints a JSON line.

    python docs/bench/flow/round_trip.py
"""

import json
import platform
import time

import torch

from inversion import ddim_invert
from watermark.models import get_model

model = get_model("tiny-flow")
z_T = torch.randn(32, 4, 32, 32, generator=torch.Generator().manual_seed(20261201))
t0 = time.time()
z_0 = model.sample(z_T, 20)
schedule = model.schedule(20)


def nmse_db(z):
    return float((10 * torch.log10((z - z_T).pow(2).flatten(1).sum(1) / z_T.pow(2).flatten(1).sum(1))).mean())


out = {"naive": nmse_db(ddim_invert(model.predict, z_0, schedule, hold=model.hold))}
for k in (1, 3, 5, 10):
    out[f"exact_{k}"] = nmse_db(ddim_invert(model.predict, z_0, schedule, exact=True, refine_iters=k, hold=model.hold))
out.update(n=32, steps=20, seconds=round(time.time() - t0, 1), machine=f"{platform.machine()}, "
           f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
print(json.dumps(out))
