"""The test of a clip: one p-value for a video, and the frames that carried the key.

Every latent frame of a watermarked clip's z_T (B, C, F, H, W) carries the same key
(``embedding.inject``). The frames' degrees of freedom (``detection.test_vectors``) are averaged,
and the mean is tested as one image is (``detection.t_statistic``): t = a / s, Student's t with
d - 1 degrees of freedom. The key is the same in every frame, so it adds up in the mean, while
noise that varies from frame to frame averages out: with F independent frames the test gains what
pooling F d values would. And the law of t under the null does not depend on how the frames are
correlated: a clip of F identical frames is tested as its one frame. Pooling the frames as if they
were independent (t over F d values) would count that frame F times, a test liberal on the
near-static clips video models make. So a clip cut short or with frames dropped is tested on what
is left, with no threshold to retune. Each frame's own t says which frames carried the key; it is
reported uncorrected, as a description, not a second verdict.

Like the image test without a null model, the test is exact on average over keys (for ``rand``
keys, whose direction is uniform on the sphere, for any recovered z_T); video models have no null
model yet (docs/concepts/video.md), and there is no geometric search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from .correction import Correction
from .detection import _groups, t_statistic, test_vectors
from .embedding import centred_spectrum
from .keys import Key


@dataclass(frozen=True, kw_only=True)
class ClipMatch:
    key_id: str
    p_value: float  # corrected for the keys tested (``correction``)
    raw_p_value: float
    distance: float  # Tree-Ring's mean |F - K| inside the mask, over the frames
    statistic: float  # Student t of the frames' mean
    df: int
    frame_p_values: tuple[float, ...]  # each latent frame's own one-sided p for this key, uncorrected
    correction: Correction


def match_clip(z_T: torch.Tensor, keys: list[Key]) -> list[ClipMatch]:
    """For each clip's recovered z_T (B, C, F, H, W), the best of ``keys`` by the test of its frames' mean."""
    if z_T.dim() != 5:
        raise ValueError(f"clips are (B, C, F, H, W); got a tensor of shape {tuple(z_T.shape)}")
    if any(k.pattern == "zeros" for k in keys):
        raise ValueError("a zeros key has no direction to pool over frames; clips take rand, ring or ringid keys")
    frames = z_T.float().transpose(1, 2)  # (B, F, C, H, W): a batch of frames per clip
    best: list[tuple] = [(-np.inf,)] * len(z_T)
    for members in _groups(keys).values():
        group = [keys[i] for i in members]
        z, k_hat = test_vectors(frames, group)  # (B, F, d), (K, d)
        t, _ = t_statistic(z.mean(1), k_hat)  # (B, K): the frames' mean, tested as one image
        t_frame, _ = t_statistic(z, k_hat)  # (B, F, K)
        df = df_frame = z.shape[-1] - 1
        for b in range(len(z_T)):
            j = int(t[b].argmax())
            if float(t[b, j]) > best[b][0]:
                frame_p = stats.t.sf(t_frame[b, :, j].numpy(), df_frame)
                best[b] = (float(t[b, j]), members[j], df, tuple(float(p) for p in frame_p))
    correction = Correction(keys=len(keys))
    out = []
    for clip, (stat, ki, df, frame_p) in zip(frames, best):
        raw = float(np.clip(stats.t.sf(stat, df), 0.0, 1.0))
        key = keys[ki]
        mask = key.mask()
        distance = float((centred_spectrum(clip)[:, mask] - key.pattern_values()[mask]).abs().mean())
        out.append(ClipMatch(key_id=key.key_id, p_value=correction.p(raw), raw_p_value=raw, distance=distance,
                             statistic=stat, df=df, frame_p_values=frame_p, correction=correction))
    return out
