"""Split-half check of the calibrated test's spread kappa (issue 34, tiny-flow's liberal keys): a null
model made of the first half of a bundled null model's samples, the test (``detection.statistics``,
``calibrated``: t / kappa as verify reads it) run on the other half, for 50 keys each of
one-channel ``ring`` keys, ``rand`` and ``ringid``. Three kappas: the plain estimate (the
confidence level at 0.5) and the upper ends of its one-sided 95 % (the default,
``calibrated.CONFIDENCE``) and 99 % intervals. Prints, per key family, the mean sd of t / kappa on
the held-out half and its mean and worst false-positive rate at alpha = 0.01 (512 samples: one
key's rate is known to about +- 0.45 %).

    python docs/bench/null/kappa_split_half.py tiny-flow      # 1 thread, under a minute
"""

import sys

import torch
from scipy import stats

from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, make_key
from watermark.scheme import calibrated
from watermark.scheme.detection import centred, statistics
from watermark.scheme.keys import new_key
from watermark.scheme.null import NullModel
from watermark.verifier import Verifier


def main(name: str, look: str = "first") -> None:
    torch.set_num_threads(1)
    m = get_model(name)
    shape = m.latent_shape(m.default_size)
    samples = Verifier([make_key(m, seed=1)], Recovery(), Decision()).nulls[look].samples
    half = NullModel(shape).update(samples[: len(samples) // 2].double())
    held_out = centred(samples[len(samples) // 2 :], half)[:, None]
    specs = {f"ring ch{c}": dict(pattern="ring", channels=(c,)) for c in range(4)}
    specs["rand"], specs["ringid"] = dict(pattern="rand"), dict(pattern="ringid")
    for spec, kw in specs.items():
        keys = [new_key(name, shape, seed=9000 + j, **kw) for j in range(50)]
        out = []
        for label, level in (("plain", 0.5), ("95 %", 0.95), ("99 %", 0.99)):
            calibrated.CONFIDENCE = level
            half.cache.clear()
            t, df = statistics(held_out, keys, half, "calibrated")
            t = t[:, 0].numpy()
            rate = (t > stats.t.isf(0.01, df)).mean(0)
            out.append(f"{label}: sd {t.std(0).mean():.3f} rate {rate.mean():.4f} worst {rate.max():.4f}")
        print(f"{name} {look} {spec:9s} " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
