"""The decoder iterations x DDIM steps sweep of `ringmark bench detect` (watermark.bench.detect.sweep) on
its own: python docs/bench/sweep_exploratory/sweep.py N SEARCH writes sweep_N_SEARCH.json here."""
import sys, json, time
from pathlib import Path
import numpy as np, torch
from watermark.bench import detect as B
from watermark.bench.attacks import ATTACKS, attack
from watermark.models import get_model
torch.set_grad_enabled(False)
n = int(sys.argv[1]); search = sys.argv[2]
m = get_model("tiny")
keys = B.make_keys(m, n, 20241127)
t0 = time.time()
wm = B.make_images(m, keys, list(range(n)), 50); clean = B.make_images(m, [None] * n, list(range(n)), 50)
print(f"gen {time.time()-t0:.0f}s", flush=True)
rng = np.random.default_rng(20241127)
attacked = {a: ([attack(im, a, rng) for im in wm], [attack(im, a, rng) for im in clean]) for a in ATTACKS}
res = B.sweep(m, attacked, keys, [0, 2, 5, 10], [1, 2, 5, 10, 20, 50], search, 8, lambda s: print(s, flush=True))
json.dump(res, open(Path(__file__).parent / f"sweep_{n}_{search}.json", "w"), indent=1)
print(f"total {time.time()-t0:.0f}s")
