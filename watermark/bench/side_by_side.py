"""``ringmark bench inversion``'s side-by-side with the seed paper's code: in one run, on the same
generated latents, how long each ringmark method takes to reach the NMSE the reference's Adam
(``bench.reference``) reaches in 20 iterations, against the reference's own time for those 20.

The reference as written samples the posterior at every encoding; its 20-iteration NMSE is then
set by that noise. The same code with the posterior mean is the second reference: the target that
measures the iteration, not the sampling.
"""

from __future__ import annotations

import time

import torch

from inversion import invert_decoder

from ..models import get_model
from . import report
from .reference import Reference

REFERENCE_ITERS = 20
METHODS = (("encoder", {}), ("fixed_point", {"rho": 0.5}), ("anderson", {"rho": 0.5}), ("adam", {"lr": 0.01}))


def clocked(run) -> list[tuple[float, torch.Tensor]]:
    """(seconds since the start, z) after each iteration of ``run(callback)``; the clock pauses
    while the iterate is copied."""
    out, paused, t0 = [], [0.0], time.perf_counter()

    def callback(z):
        t = time.perf_counter()
        out.append((t - t0 - paused[0], z.clone()))
        paused[0] += time.perf_counter() - t

    run(callback)
    return out


@torch.no_grad()
def side_by_side(model_name: str, n: int, gen_steps: int, seed: int, max_iters: int, log) -> dict:
    """One model: the two references' 20-iteration NMSE and time, then each method's time to
    reach each of them (None: not within ``max_iters``)."""
    model = get_model(model_name)
    z_T = torch.randn(n, *model.latent_shape(model.default_size), generator=torch.Generator().manual_seed(seed))
    z_star = model.sample(z_T, gen_steps)
    x = model.decode(z_star)
    nmse = lambda z: float(report.nmse_db(z, z_star).mean())  # noqa: E731
    refs = {}
    for label, sample in (("as written", True), ("posterior mean", False)):
        ref = Reference(model.vae, sample=sample, generator=torch.Generator().manual_seed(seed))
        trace = clocked(lambda cb: ref.decoder_inv_nograd(x.float(), num_steps=REFERENCE_ITERS,
                                                          callback=lambda i, z: cb(z)))
        refs[label] = {"nmse_db": nmse(trace[-1][1]), "seconds": trace[-1][0]}
        log(f"{model_name}: reference ({label}), {REFERENCE_ITERS} it: {refs[label]}")
    rows = []
    for method, kwargs in METHODS:
        def run(cb, method=method, kwargs=kwargs):
            z, _ = invert_decoder(method, model.encode, model.decode, x, iters=0 if method == "encoder" else max_iters,
                                  callback=lambda d: cb(d["z"]), **kwargs)
            cb(z)  # the last iterate (the encoder's only one)

        trace = [(t, nmse(z)) for t, z in clocked(run)]
        row = {"method": method, "nmse_db_at_end": trace[-1][1], "iterations": len(trace) - 1}
        for label, r in refs.items():
            reached = next(((k, t) for k, (t, e) in enumerate(trace) if e <= r["nmse_db"]), None)
            row[label] = None if reached is None else {"iterations": reached[0], "seconds": reached[1],
                                                       "vs_reference": reached[1] / r["seconds"]}
        rows.append(row)
        log(f"{model_name}: {row}")
    return {"model": model_name, "n": n, "reference": refs, "methods": rows}


def markdown(results: list[dict]) -> list[str]:
    lines = [f"Side by side with the reference's `decoder_inv_nograd` (Adam, lr 0.01, float32; `bench/reference.py`), "
             f"one run per model on the same generated latents: time to reach the reference's {REFERENCE_ITERS}-"
             "iteration NMSE, as a multiple of the reference's time for those iterations.", "",
             "| model | method | reference as written: NMSE, s | ... reached in (it., s, × ref.) | "
             "reference, posterior mean: NMSE, s | ... reached in (it., s, × ref.) |", "|---|---|---|---|---|---|"]
    for res in results:
        refs = res["reference"]
        for row in res["methods"]:
            cells = []
            for label in ("as written", "posterior mean"):
                r, got = refs[label], row[label]
                cells.append(f"{r['nmse_db']:.1f} dB, {r['seconds']:.1f} s")
                cells.append("not reached" if got is None else
                             f"{got['iterations']}, {got['seconds']:.2f} s, {got['vs_reference']:.2f}×")
            lines.append(f"| {res['model']} (n={res['n']}) | {row['method']} | " + " | ".join(cells) + " |")
    return lines + [""]
