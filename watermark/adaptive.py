"""Adaptive recovery: the first look (the encoder) decides the clear cases; only the images whose
decision is unclear are refined by a gradient-free decoder inversion and tested again.

Unclear: the p-value lies in the weak band around alpha (within WEAK_EVIDENCE of it, either side),
or the best key's lead over the second is small (the runner-up within WEAK_EVIDENCE of it) while
the best is at most WEAK_EVIDENCE x alpha.

Two looks at one image are two tests, so every image's reported p-value is Bonferroni-corrected
for both: p = min(1, 2 min(p_1, p_2)), and p = min(1, 2 p_1) for an image seen once. Whatever
decides which images get a second look, P(p <= alpha) <= P(p_1 <= alpha/2) + P(p_2 <= alpha/2)
<= alpha when each look's p is valid: the corrected p is calibrated (tested on clean images,
binomially). The price is a factor 2 on every p-value, which moves no clear decision.

The second look's z_T comes from another recovery than the null model's (``scheme.null``), so it
is tested without one (exact on average over keys, as ``--null none``).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from inversion import ITERATIVE, invert_decoder

from .scheme.detection import KeyMatch, match_keys

LOOKS = 2  # the Bonferroni factor: the first look and the second


def parse_refine(spec: str) -> tuple[str, int]:
    """'METHOD:ITERS' -> (method, iterations), an iterative method and a positive count."""
    method, _, iters = spec.partition(":")
    if method not in ITERATIVE or not iters.isdigit() or int(iters) < 1:
        raise ValueError(f"refine must be METHOD:ITERS with METHOD one of {sorted(ITERATIVE)} and ITERS positive, "
                         f"e.g. anderson:10; got {spec!r}")
    return method, int(iters)


def unclear(match: KeyMatch, alpha: float, band: float) -> bool:
    """Whether the first look leaves the decision unclear (module docstring)."""
    weak = alpha / band < match.p_value <= alpha * band
    close = match.p_value <= alpha * band and match.runner_up_p_value <= band * match.p_value
    return weak or close


@torch.inference_mode()
def second_look(model, x: torch.Tensor, z_0: torch.Tensor, keys: list, transforms: list, matches: list[KeyMatch],
                recovery, alpha: float, band: float, noise,
                extra: dict | None = None) -> tuple[list[KeyMatch], list[int]]:
    """The matches after the second look, each p corrected for LOOKS looks, and the decoder
    iterations each image ran. ``noise(z_0) -> z_T``: the DDIM inversion of the first look;
    ``extra``: the refining method's own keywords, per image along the batch (e.g. ``valid``)."""
    method, iters = parse_refine(recovery.refine)
    again = [i for i, m in enumerate(matches) if unclear(m, alpha, band)]
    second: dict[int, KeyMatch] = {}
    if again:
        z_ref, _ = invert_decoder(method, model.encode, model.decode, x[again].to(model.device, model.dtype),
                                  iters=iters, z0=z_0[again].to(model.device, model.dtype),
                                  **{k: v[again] for k, v in (extra or {}).items()})
        second = dict(zip(again, match_keys(noise(z_ref), keys, transforms, None)))
    out = [_corrected(m, second.get(i)) for i, m in enumerate(matches)]
    return out, [iters if i in second else 0 for i in range(len(matches))]


def _corrected(first: KeyMatch, second: KeyMatch | None) -> KeyMatch:
    """The better look, its p-values corrected for LOOKS looks."""
    best = first if second is None or first.p_value <= second.p_value else second
    return replace(best, p_value=min(1.0, LOOKS * best.p_value),
                   runner_up_p_value=min(1.0, LOOKS * best.runner_up_p_value))
