"""p-values of verify's default path on both bundled models, for comparing two versions of the code."""
import json, sys, torch
from watermark.models import get_model
from watermark.pipeline import Recovery, detect
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key
from watermark.io.nullfile import find_null, load_null
out = {}
for name in ("tiny", "tiny-sd"):
    m = get_model(name)
    key = new_key(name, (4, 32, 32), seed=99)
    rec = Recovery().for_model(m.default_recovery)
    null = load_null(find_null(name, rec.for_model(m.default_recovery).looks()["first"], (4, 32, 32)))
    for wm in (True, False):
        x = m.generate(watermarked_latents(key, seeds=range(8), watermark=wm), 10) * 2 - 1
        for exact in (False, True):
            r = Recovery(exact=exact)
            out[f"{name} wm={wm} exact={exact}"] = [d.p_value for d in detect(m, x, [key], r, nulls={"first": null})]
json.dump(out, open(sys.argv[1], "w"), indent=0)
