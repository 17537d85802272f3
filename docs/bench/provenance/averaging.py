"""The averaging forgery against `verify --log`, at budgets ``bench security --provenance-only``
leaves out for time (issue 35's M = 1,000): the pattern of M watermarked images of one key (their
mean less the mean of M clean ones) added to N clean covers, each judged through the path users
run (``bench.forgery.LoggedVerify``: ``pipeline.detect``, then ``provenance.Checker``) with N
genuine generations of the key logged. The seeds, key and steps are ``bench security``'s.

    python docs/bench/provenance/averaging.py -n 100 --budgets 100,1000 \
        -o docs/bench/provenance/averaging.json
"""

import argparse
import tempfile
import time


from watermark import get_model
from watermark.bench.forgery import LoggedVerify
from watermark.bench.security import Verify, generate
from watermark.scheme.keys import new_key

from stamp import finish  # beside this script


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="covers forged, and genuine images logged")
    parser.add_argument("--budgets", default="100,1000", help="M, the watermarked images averaged")
    parser.add_argument("--steps", type=int, default=10, help="the generations' DDIM steps (bench security's)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    model = get_model("tiny")
    key = new_key("tiny", model.latent_shape(model.default_size), seed=20261201)  # bench security's
    marked = generate(model, key, range(args.n), args.steps, True)
    covers = generate(model, key, range(100_000, 100_000 + args.n), args.steps, False)
    top = max(budgets)
    wm = generate(model, key, range(200_000, 200_000 + top), args.steps, True)
    clean = generate(model, key, range(300_000, 300_000 + top), args.steps, False)
    res = {"n": args.n, "steps": args.steps, "budgets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        prov = LoggedVerify(model, Verify(model, "tiny", [key]), key, marked, tmp, seeds=range(args.n))
        for m in budgets:
            forged = (covers + wm[:m].mean(0) - clean[:m].mean(0)).clamp(-1, 1)
            res["budgets"][m] = prov.judge(forged)
            print(f"averaging forgery M={m}", res["budgets"][m], flush=True)
        prov.log.close()
    finish(res, t0, args.output)


if __name__ == "__main__":
    main()
