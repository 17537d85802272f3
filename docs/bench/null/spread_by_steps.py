"""Spread along ring keys on one channel and rand keys (40 each), from the first look's z_T of 512
clean images made with 10 and with 50 sampling steps, over the shipped null model's (issue 34: is
tiny-flow's per-key failure the slow test's 10-step images?).

    python docs/bench/null/spread_by_steps.py tiny-flow      # 2 threads, 7 min
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from watermark.bench.null import clean_images
from watermark.io.images import to_pil, to_tensor
from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, make_key, run_look
from watermark.scheme.geometry import search_grid
from watermark.scheme.keys import new_key
from watermark.verifier import Verifier

sys.path.insert(0, str(Path(__file__).parents[1] / "verdict"))
from photo_spread import spread_ratio  # noqa: E402


def main(name: str) -> None:
    torch.set_num_threads(2)
    m = get_model(name)
    shape = m.latent_shape(m.default_size)
    v = Verifier([make_key(m, seed=1)], Recovery(), Decision())
    null, first = v.nulls["first"], v.recovery.looks()["first"]
    identity = search_grid("none", shape[-1])
    keys = {f"ring ch{c}": [new_key(name, shape, pattern="ring", channels=(c,), seed=5000 + j) for j in range(40)]
            for c in range(4)}
    keys["rand"] = [new_key(name, shape, pattern="rand", seed=6000 + j) for j in range(40)]
    for steps in (10, 50):
        x = to_tensor(to_pil((clean_images(m, 512, steps=steps, seed=77_000_000) + 1) / 2))
        z_T = torch.cat([run_look(m, x[i : i + 64], first).z_T for i in range(0, 512, 64)])
        for k, ks in keys.items():
            r = spread_ratio(null, z_T, ks, identity)
            print(name, steps, k, "mean ratio %.3f sd %.3f" % (r.mean(), r.std()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
