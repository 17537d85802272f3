"""tiny-flow: naive flow inversion (ringmark's step) against reverse Euler, on latents from known noise.

Naive (Tree-Ring's DDIM inversion, ``inversion.ddim``): the step from s' back to s takes the
prediction at (z_{s'}, t_s), the point it starts from but the level it goes to, and holds one
part of it ("v", tiny-flow's ``hold``, or "eps"). Reverse Euler is the explicit Euler step of the
flow ODE run backwards, z_s = z_{s'} + (s - s') u(z_{s'}, s'): the velocity at the point and its
own level. "eps" is the other part the naive step may hold (Tree-Ring's step on eps-prediction
models). Exact inversion is not re-measured here: docs/bench/flow/round_trip.py.

Two paths, NMSE (dB) of the recovered z_T against the true one, per image and mean:
  round trip: z_0 = ringmark's Euler sampler from z_T (``model.sample``), inverted on the same steps;
  image: ``model.generate`` (the images embed writes, 50 steps), 8-bit quantized, encoded (tiny-flow's
         default recovery, the encoder), inverted on tiny-flow's default 10 steps (what verify runs).

    python docs/bench/flow_inversion/measure.py    # 7.3 CPU-min (about 4 min on 2 idle cores); writes measure.json here
"""

import json
import platform
import sys
import time
from pathlib import Path

import torch

from inversion import ddim_invert
from watermark.models import get_model

N, SEED = 8, 20261202
model = get_model("tiny-flow")
T = model.scheduler.config.num_train_timesteps
z_T = torch.randn(N, *model.latent_shape(model.default_size), generator=torch.Generator().manual_seed(SEED))


def reverse_euler(z_0, schedule):
    """The flow ODE integrated from s = 0 up with explicit Euler: u at (z_{s'}, s')."""
    z = z_0
    for t, a, b, a_next, b_next in schedule.steps()[::-1]:
        x0, eps = model.predict(z, b_next * T)  # the level z is at: s' = b_next
        z = z + (b - b_next) * (eps - x0)
    return z


METHODS = {
    "naive_hold_v": lambda z, s: ddim_invert(model.predict, z, s, hold="v"),
    "naive_hold_eps": lambda z, s: ddim_invert(model.predict, z, s, hold="eps"),
    "reverse_euler": torch.inference_mode()(reverse_euler),
}


def nmse_db(z):
    return (10 * torch.log10((z.float() - z_T).pow(2).flatten(1).sum(1) / z_T.pow(2).flatten(1).sum(1))).tolist()


def compare(z_0, steps):
    schedule = model.schedule(steps, tuple(z_0.shape[-2:]))
    rows = {}
    for name, invert in METHODS.items():
        per = nmse_db(invert(z_0, schedule))
        rows[name] = {"mean_db": round(sum(per) / len(per), 2), "per_image_db": [round(v, 2) for v in per]}
    return rows


t0 = time.time()
out = {"command": "python " + " ".join(sys.argv), "model": "tiny-flow", "n": N, "seed": SEED,
       "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"}
for steps in (10, 20):
    out[f"round_trip_{steps}_steps"] = compare(model.sample(z_T, steps), steps)
with torch.inference_mode():
    images = model.generate(z_T, 50)
    x = (images * 255).round() / 255 * 2 - 1  # the 8-bit PNG embed writes, in [-1, 1]
    z_0 = model.encode(x.to(model.device, model.dtype))
out["image_50_steps_encoder_10_step_inversion"] = compare(z_0, 10)
out["seconds"] = round(time.time() - t0, 1)
text = json.dumps(out, indent=1)
print(text)
(Path(__file__).parent / "measure.json").write_text(text + "\n")
