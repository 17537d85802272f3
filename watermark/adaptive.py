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

Each look is tested with the null model of its own recovery (``recovery.LookSpec``; the edited
look's is made from edited clean images, ``calibration``). ``pipeline.detect`` takes the looks;
this file decides which image gets which.
"""

from __future__ import annotations

import torch

from inversion import ITERATIVE
from inversion.attack_aware import unclipped

from .scheme.detection import KeyMatch

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


def plan(matches: list[KeyMatch], edited: list[bool], alpha: float, band: float) -> tuple[list[int], list[int]]:
    """Which images get another look, from the first look's matches and the pixels alone: (the
    unedited images it leaves unclear, for the second look; the edited images, for the
    edited-image look, which alone tests them)."""
    again = [i for i, m in enumerate(matches) if not edited[i] and unclear(m, alpha, band)]
    return again, [i for i in range(len(matches)) if edited[i]]
