"""The imprinting forgery against `verify --log`, on its own (``bench security --provenance-only``
runs it with everything else, 52 min): N clean model images and N photographs each pushed by Adam
toward the z_T recovered from one logged watermarked image (``security.imprint``: through the public
encoder and DDIM inversion, on the key frequencies every key may use, PSNR >= 30 dB to the cover),
judged after 1, 2, 5 and 10 steps through ``bench.forgery.LoggedVerify`` (``pipeline.detect``, then
``provenance.Checker``) with N genuine generations of the key logged. Key, seeds and steps are
``bench security``'s.

    python docs/bench/provenance/imprinting.py -n 100 --steps 10 -o docs/bench/provenance/imprinting.json
"""

import argparse
import tempfile
import time

import torch

from watermark import get_model
from watermark.bench.forgery import LoggedVerify
from watermark.bench.null import photographs
from watermark.bench.security import MIN_PSNR, Verify, generate, imprint, public_mask
from watermark.pipeline import psnr, recover_noise
from watermark.scheme.keys import new_key

from stamp import finish  # beside this script


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="covers of each kind, and genuine images logged")
    parser.add_argument("--steps", type=int, default=10, help="Adam steps (judged after 1, 2, 5 and these)")
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    t0 = time.perf_counter()
    model = get_model("tiny")
    key = new_key("tiny", model.latent_shape(model.default_size), seed=20261201)  # bench security's
    verify = Verify(model, "tiny", [key])
    marked = generate(model, key, range(args.n), 10, True)
    covers = {"model images": generate(model, key, range(100_000, 100_000 + args.n), 10, False),
              "photographs": photographs(args.n, model.default_size, seed=11)}
    with torch.no_grad():  # what the forger aims at: the z_T recovered from one watermarked image
        target, _ = recover_noise(model, marked[:1], verify.recovery)
    res = {"n": args.n, "min_psnr": MIN_PSNR, "forgery": {}}
    checkpoints = tuple(k for k in (1, 2, 5) if k < args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        prov = LoggedVerify(model, verify, key, marked, tmp)
        for kind, cov in covers.items():
            if cov is None:
                continue
            forged, _ = imprint(model, cov, target.expand(len(cov), -1, -1, -1), verify.recovery, args.steps,
                                mask=public_mask(key.latent_shape), checkpoints=checkpoints)
            res["forgery"][kind] = {k: {**prov.judge(im), "psnr": float(psnr(im, cov).mean())}
                                    for k, im in forged.items()}
            print(kind, res["forgery"][kind], flush=True)
        prov.log.close()
    finish(res, t0, args.output)


if __name__ == "__main__":
    main()
