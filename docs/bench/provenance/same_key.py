"""Why another generation under the same key can be confirmed (issue 35's "different generation,
same key" case): generations sharing a key share the key's imprint on their low frequencies, which
the pooled-latent fingerprint (``provenance.fingerprint.latent``) sees.

16 generations under one key, 16 clean, 16 under another key (tiny, 20 DDIM steps, 8-bit); mean
cosine of their fingerprints within and across the groups, and the share of same-key pairs above
the 99th percentile of their similarity to tiny's shipped reference pool (what a single-candidate
check at alpha = 0.01 would confirm).

    python docs/bench/provenance/same_key.py
"""

import json
import platform
import sys

import numpy as np
import torch

from watermark import Recovery, get_model, make_key, watermarked_latents
from watermark.provenance import fingerprint
from watermark.provenance.check import reference_pool
from watermark.recovery import look_latents


def main():
    model = get_model("tiny")
    spec = Recovery().for_model(model.default_recovery).looks()["first"]

    def prints(key, seeds, watermark=True):
        z = torch.cat([watermarked_latents(key, seeds=[s], watermark=watermark) for s in seeds])
        x = (model.generate(z, steps=20) * 255).round() / 255 * 2 - 1
        return fingerprint.latent(look_latents(model, x, spec)[0])

    k, other = make_key(model, seed=5), make_key(model, seed=6)
    same, clean, cross = prints(k, range(100, 116)), prints(k, range(200, 216), False), prints(other, range(300, 316))
    off = ~np.eye(16, dtype=bool)
    ref = reference_pool("tiny", tuple(k.latent_shape))
    res = {"same_key": float((same @ same.T)[off].mean()), "clean_clean": float((clean @ clean.T)[off].mean()),
           "key_clean": float((same @ clean.T).mean()), "key_other_key": float((same @ cross.T).mean()),
           "same_key_pairs_above_reference_99th_percentile": float(np.mean((same @ same.T)[off] > np.quantile(
               same @ ref.T, 0.99))),
           "machine": f"{platform.machine()}, torch {torch.__version__}", "command": "python " + " ".join(sys.argv)}
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
