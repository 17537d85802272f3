"""Adaptive recovery: the first look (the encoder) decides the clear cases; only the images whose
decision is unclear are refined by a gradient-free decoder inversion and tested again.

Unclear: the p-value lies in the weak band around alpha (within WEAK_EVIDENCE of it, either side),
or the best key's lead over the second is small (the runner-up within WEAK_EVIDENCE of it) while
the best is at most WEAK_EVIDENCE x alpha. Such an image is refined by the given method and
tested again; two looks at one image are two tests, so its reported p-value is Bonferroni-corrected
for both: p = min(1, 2 min(p_1, p_2)), and p = min(1, 2 p_1) for an image seen once. Whatever
decides which images get a second look, P(p <= alpha) <= P(p_1 <= alpha/2) + P(p_2 <= alpha/2)
<= alpha when each look's p is valid.

Edited: with the attack-aware iteration (``inversion.attack_aware``), an image that shows an edit the
encoder cannot see through (more than EDITED of its pixel values clipped to black or white, as after
a strong brightness change or a rotation's black corners) is recovered by that iteration instead,
with at least EDITED_ITERS iterations, and tested once: its p is the attack-aware look's, uncorrected.
Which recovery tests it is decided from its pixels alone, before any key is tested, so that p is as
valid as either look's. On `tiny` under Tree-Ring's brightness jitter this is worth 0.89 -> 0.94
TPR at 1 % FPR over the weak-band rule (BENCHMARKS.md, "Beyond the paper"). Calibration of both
rules is tested on clean images (binomially).

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
EDITED_ITERS = 10  # at least this many attack-aware iterations for an edited image (study.py: TPR under
# brightness 0.90 after 2, 0.94 after 10, when the edited image is tested by that look alone)
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


def unclear(match: KeyMatch, alpha: float, band: float) -> bool:
    """Whether the first look leaves the decision unclear (module docstring)."""
    weak = alpha / band < match.p_value <= alpha * band
    close = match.p_value <= alpha * band and match.runner_up_p_value <= band * match.p_value
    return weak or close


@torch.inference_mode()
def second_look(model, x: torch.Tensor, z_0: torch.Tensor, keys: list, transforms: list, matches: list[KeyMatch],
                recovery, alpha: float, band: float, noise, edited: list[bool] | None = None,
                extra: dict | None = None) -> tuple[list[KeyMatch], list[int]]:
    """The matches after the second look, and the decoder iterations each image ran: an edited
    image's from the attack-aware look alone, every other p corrected for LOOKS looks.
    ``noise(z_0) -> z_T``: the DDIM inversion of the first look; ``edited``: per image, whether it
    shows clipping (``clipped_share`` > EDITED); ``extra``: the refining method's own keywords, per
    image along the batch (e.g. ``valid``)."""
    method, iters = parse_refine(recovery.refine)
    edited = edited or [False] * len(matches)
    alone = [i for i in range(len(matches)) if edited[i]]  # tested by the attack-aware look alone
    again = [i for i, m in enumerate(matches) if not edited[i] and unclear(m, alpha, band)]
    second: dict[int, KeyMatch] = {}
    ran = [0] * len(matches)
    for which, n in ((again, iters), (alone, max(iters, EDITED_ITERS))):
        if which:
            z_ref, _ = invert_decoder(method, model.encode, model.decode, x[which].to(model.device, model.dtype),
                                      iters=n, z0=z_0[which].to(model.device, model.dtype),
                                      **{k: v[which] for k, v in (extra or {}).items()})
            second.update(zip(which, match_keys(noise(z_ref), keys, transforms, None)))
            for i in which:
                ran[i] = n
    out = [second[i] if edited[i] else _corrected(m, second.get(i)) for i, m in enumerate(matches)]
    return out, ran


def _corrected(first: KeyMatch, second: KeyMatch | None) -> KeyMatch:
    """The better look, its p-values corrected for LOOKS looks."""
    best = first if second is None or first.p_value <= second.p_value else second
    return replace(best, p_value=min(1.0, LOOKS * best.p_value),
                   runner_up_p_value=min(1.0, LOOKS * best.runner_up_p_value))
