"""Split-half check of the calibrated test's spread kappa (issue 34, tiny-flow's liberal keys): kappa
fitted on the first half of a bundled null model's samples, t / kappa read on the other half, for
50 keys each of one-channel ``ring`` keys, ``rand`` and ``ringid``. Three kappas: the plain
estimate (sbar^2 from 64 samples, as ``scheme.calibrated`` takes it) and the upper ends of its
one-sided 95 % and 99 % intervals, kappa (1 + z se), se = sqrt(se(sigma^2)^2 + se(sbar^2)^2) / 2.
Prints, per key family, the mean sd of t / kappa on the held-out half and its mean and worst
false-positive rate at alpha = 0.01 (512 samples: one key's rate is known to about +- 0.45 %).

    python docs/bench/null/kappa_split_half.py tiny-flow      # 1 thread, under a minute
"""

import sys

import torch
from scipy import stats

from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, make_key
from watermark.scheme.detection import t_statistic, test_vectors
from watermark.scheme.keys import new_key
from watermark.verifier import Verifier


def main(name: str, look: str = "first") -> None:
    torch.set_num_threads(1)
    m = get_model(name)
    shape = m.latent_shape(m.default_size)
    null = Verifier([make_key(m, seed=1)], Recovery(), Decision()).nulls[look]
    z = null.samples.float() - null.mean().float()[None]
    a_half, b_half = z[: len(z) // 2], z[len(z) // 2 :]
    specs = {f"ring ch{c}": dict(pattern="ring", channels=(c,)) for c in range(4)}
    specs["rand"], specs["ringid"] = dict(pattern="rand"), dict(pattern="ringid")
    for spec, kw in specs.items():
        keys = [new_key(name, shape, seed=9000 + j, **kw) for j in range(50)]
        v_a, k = test_vectors(a_half[:, None], keys)
        v_a, k = v_a[:, 0].double(), k.double()
        v_b = test_vectors(b_half[:, None], keys)[0][:, 0].double()
        d = v_a.shape[-1]
        a2 = (v_a @ k.T).pow(2)
        sigma2 = a2.mean(0)
        per_sample = v_a[:64].pow(2).mean(-1)
        sbar2 = per_sample.mean()
        plain = (sigma2 * (d - 1) / (d * sbar2 - sigma2)).sqrt()
        se_sigma2 = a2.std(0) / (len(a2) ** 0.5 * sigma2)
        se_sbar2 = per_sample.std() / (len(per_sample) ** 0.5 * sbar2)
        se = (se_sigma2**2 + se_sbar2**2).sqrt() / 2
        t_b, _ = t_statistic(v_b, k)
        crit = stats.t.isf(0.01, d - 1)
        out = []
        for label, kappa in (("plain", plain), ("95 %", plain * (1 + 1.645 * se)), ("99 %", plain * (1 + 2.326 * se))):
            t = (t_b / kappa).numpy()
            rate = (t > crit).mean(0)
            out.append(f"{label}: sd {t.std(0).mean():.3f} rate {rate.mean():.4f} worst {rate.max():.4f}")
        print(f"{name} {look} {spec:9s} d={d}  " + " | ".join(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
