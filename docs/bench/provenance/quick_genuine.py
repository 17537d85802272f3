"""A first look at `verify --log` on genuine images and same-key generations, through the path
users run (``bench.forgery.LoggedVerify``: ``pipeline.detect`` then ``provenance.Checker``), while
the full ``ringmark bench security --provenance-only`` run is pending: N watermarked ``tiny``
images of one key logged, judged under a few of Tree-Ring's six and the held-out edits, and N
other generations under the key, not logged.

    python docs/bench/provenance/quick_genuine.py -n 32 -o docs/bench/provenance/quick_genuine.json

With ``--all``, every edit of ``bench security``'s genuine rows (Tree-Ring's six and the held-out
edits, ``bench.forgery.genuine``, pooled); ``--first`` and ``--steps`` choose fresh seeds and the
generation's steps (``embed``'s 50), so the images are none a threshold was chosen on:

    python docs/bench/provenance/quick_genuine.py --all -n 100 --first 5000000000 --steps 50 \
        -o docs/bench/provenance/tiny-genuine-fresh.json
"""

import argparse
import tempfile
import time

import numpy as np

from watermark import get_model
from watermark.bench.attacks import attack
from watermark.bench.forgery import LoggedVerify, genuine
from watermark.bench.security import Verify, generate
from watermark.io.images import to_pil, to_tensor
from watermark.scheme.keys import new_key

from stamp import finish  # beside this script

EDITS = ("none", "jpeg", "blur", "brightness", "rotation", "crop", "rotation 20", "centre crop 80 %", "25 % occlusion",
         "horizontal mirror")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=32)
    parser.add_argument("--first", type=int, default=0, help="the first seed of the logged images")
    parser.add_argument("--steps", type=int, default=10, help="their generation's DDIM steps")
    parser.add_argument("--all", action="store_true", help="every edit of bench security's genuine rows")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = get_model("tiny")
    key = new_key("tiny", model.latent_shape(model.default_size), seed=20261201)  # bench security's
    marked = generate(model, key, range(args.first, args.first + args.n), args.steps, True)
    res = {"n": args.n, "first_seed": args.first, "steps": args.steps, "edits": {}}
    with tempfile.TemporaryDirectory() as tmp:
        prov = LoggedVerify(model, Verify(model, "tiny", [key]), key, marked, tmp,
                            seeds=range(args.first, args.first + args.n))
        if args.all:
            res["edits"] = genuine(prov, marked, lambda line: print(line, flush=True))
        for name in () if args.all else EDITS:
            rng = np.random.default_rng(0)
            res["edits"][name] = prov.judge(to_tensor([attack(im, name, rng) for im in to_pil((marked + 1) / 2)]))
            print(name, res["edits"][name], flush=True)
        others = range(args.first + 600_000, args.first + 600_000 + args.n)
        res["same key, not logged"] = prov.judge(generate(model, key, others, args.steps, True))
        print("same key", res["same key, not logged"], flush=True)
        prov.log.close()
    finish(res, t0, args.output)


if __name__ == "__main__":
    main()
