"""Seconds per image of each recovery of the decision study on this machine's CPU, for the TPR
against time trade-off on users' hardware (the study's own seconds are GPU batch times):
``study.recover`` (decoder inversion + 10 DDIM steps) on 16 watermarked ``tiny-sd`` images,
batch 8 as ``verify``. Run from the repository root:

    python docs/bench/study/cpu_seconds.py    # writes docs/bench/study/tiny-sd/cpu_seconds.json
"""

import json
from pathlib import Path

from watermark.bench.detect import make_images, make_keys
from watermark.bench.report import machine
from watermark.bench.study import parse_recovery, recover
from watermark.models import get_model

RECOVERIES = ["encoder", "fixed_point:10", "fixed_point:20", "fixed_point:50", "inertial_km:20", "adam:20",
              "gradient:20"]

model = get_model("tiny-sd")
images = make_images(model, make_keys(model, 16, 20241127), list(range(16)), 50)
out = {"machine": machine("cpu"), "images": 16, "batch": 8, "ddim_steps": 10, "seconds_per_image": {}}
for spec in RECOVERIES:
    method, iters = parse_recovery(spec)
    _, seconds = recover(model, images, method, iters, 10, 8)
    out["seconds_per_image"][spec] = round(seconds, 3)
    print(spec, out["seconds_per_image"][spec], flush=True)
(Path(__file__).parent / "tiny-sd" / "cpu_seconds.json").write_text(json.dumps(out, indent=1) + "\n")
