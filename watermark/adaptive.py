"""Adaptive recovery: the first look (the encoder) decides the clear cases; only the images whose
decision is unclear are refined by a gradient-free decoder inversion and tested again.

Unclear: the p-value lies in the weak band around alpha (within WEAK_EVIDENCE of it, either side),
or the best key's lead over the second is small (the runner-up within WEAK_EVIDENCE of it) while
the best is at most WEAK_EVIDENCE x alpha; or the image shows an edit the first look cannot see
through (``edited``: more than EDITED of its pixel values clipped to black or white, as after a
strong brightness change) and the first look did not already find a key at alpha / WEAK_EVIDENCE.
The last rule is for the attack-aware iteration (``inversion.attack_aware``), which leaves the
clipped pixels out: on `tiny` under Tree-Ring's brightness jitter the first look's p is large,
not weak, for most images it recovers (BENCHMARKS.md, "Beyond the paper").

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
from inversion.attack_aware import unclipped

from .scheme.detection import KeyMatch, match_keys

LOOKS = 2  # the Bonferroni factor: the first look and the second
EDITED = 0.15  # share of clipped pixel values above which an image counts as edited (clean `tiny`
# images: at most 8.4 % in 48, 90th percentile 3.8 %; after a brightness factor of 2: at least 14.7 %)


def parse_refine(spec: str) -> tuple[str, int]:
    """'METHOD:ITERS' -> (method, iterations), an iterative method and a positive count."""
    method, _, iters = spec.partition(":")
    if method not in ITERATIVE or not iters.isdigit() or int(iters) < 1:
        raise ValueError(f"refine must be METHOD:ITERS with METHOD one of {sorted(ITERATIVE)} and ITERS positive, "
                         f"e.g. anderson:10; got {spec!r}")
    return method, int(iters)


def clipped_share(x: torch.Tensor) -> torch.Tensor:
    """The share of each image's pixel values (B, 3, H, W in [-1, 1]) clipped to black or white."""
    return 1 - unclipped(x).float().flatten(1).mean(1)


def unclear(match: KeyMatch, alpha: float, band: float, edited: bool = False) -> bool:
    """Whether the first look leaves the decision unclear (module docstring)."""
    weak = alpha / band < match.p_value <= alpha * band
    close = match.p_value <= alpha * band and match.runner_up_p_value <= band * match.p_value
    return weak or close or (edited and match.p_value > alpha / band)


@torch.inference_mode()
def second_look(model, x: torch.Tensor, z_0: torch.Tensor, keys: list, transforms: list, matches: list[KeyMatch],
                recovery, alpha: float, band: float, noise, edited: list[bool] | None = None,
                extra: dict | None = None) -> tuple[list[KeyMatch], list[int]]:
    """The matches after the second look, each p corrected for LOOKS looks, and the decoder
    iterations each image ran. ``noise(z_0) -> z_T``: the DDIM inversion of the first look;
    ``edited``: per image, whether it shows clipping (``clipped_share`` > EDITED); ``extra``: the
    refining method's own keywords, per image along the batch (e.g. ``valid``)."""
    method, iters = parse_refine(recovery.refine)
    edited = edited or [False] * len(matches)
    again = [i for i, m in enumerate(matches) if unclear(m, alpha, band, edited[i])]
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
