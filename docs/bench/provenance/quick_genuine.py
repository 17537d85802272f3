"""A first look at `verify --log` on genuine images and same-key generations, through the path
users run (``bench.forgery.LoggedVerify``: ``pipeline.detect`` then ``provenance.Checker``), while
the full ``ringmark bench security --provenance-only`` run is pending: N watermarked ``tiny``
images of one key logged, judged under a few of Tree-Ring's six and the held-out edits, and N
other generations under the key, not logged.

    python docs/bench/provenance/quick_genuine.py -n 32 -o docs/bench/provenance/quick_genuine.json
"""

import argparse
import json
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from watermark import get_model
from watermark.bench.attacks import attack
from watermark.bench.forgery import LoggedVerify
from watermark.bench.security import Verify, generate
from watermark.io.images import to_pil, to_tensor
from watermark.scheme.keys import new_key

EDITS = ("none", "jpeg", "blur", "brightness", "rotation", "crop", "rotation 20", "centre crop 80 %", "25 % occlusion",
         "horizontal mirror")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = get_model("tiny")
    key = new_key("tiny", model.latent_shape(model.default_size), seed=20261201)  # bench security's
    marked = generate(model, key, range(args.n), 10, True)
    res = {"n": args.n, "edits": {}}
    with tempfile.TemporaryDirectory() as tmp:
        prov = LoggedVerify(model, Verify(model, "tiny", [key]), key, marked, tmp)
        for name in EDITS:
            rng = np.random.default_rng(0)
            res["edits"][name] = prov.judge(to_tensor([attack(im, name, rng) for im in to_pil((marked + 1) / 2)]))
            print(name, res["edits"][name], flush=True)
        res["same key, not logged"] = prov.judge(generate(model, key, range(600_000, 600_000 + args.n), 10, True))
        print("same key", res["same key, not logged"], flush=True)
        prov.log.close()
    res.update(seconds=round(time.perf_counter() - t0, 1),
               machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               command="python " + " ".join(sys.argv))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
