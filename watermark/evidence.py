"""What a report shows of one image's test beyond its numbers: the third room of verification,
after recovery (``recovery``) and the decision (``pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .scheme.embedding import centred_spectrum
from .scheme.geometry import IDENTITY, undo
from .scheme.keys import Key


@dataclass(frozen=True, eq=False)
class Evidence:
    """What a report shows of one image's test beyond its numbers (``io.report``): the magnitude of
    the recovered z_T's centred spectrum on the best key's first channel, after the transform the
    search undid. It follows from the image and the public model alone: no key value is in it (the
    key is the secret; the report never draws its pattern)."""

    spectrum: np.ndarray  # (H, W) float32, |F(z_T)|, zero frequency at the centre
    channel: int
    radius: int  # the key's mask radius, in bins


@torch.inference_mode()
def gather_evidence(z_T: torch.Tensor, keys: list[Key], matches: list, transforms: list) -> list[Evidence]:
    """Each image's ``Evidence``: |F(z_T)| on the best key's first channel under the transform
    that won."""
    by_id, by_name = {k.key_id: k for k in keys}, {t.name: t for t in transforms}
    out = []
    for i, match in enumerate(matches):
        key = by_id[match.key_id]
        undone = undo(z_T[i : i + 1].float(), [by_name.get(match.transform, IDENTITY)])[0, 0]
        spectrum = centred_spectrum(undone[key.channels[0]]).abs().float().numpy()
        out.append(Evidence(spectrum=spectrum, channel=key.channels[0], radius=key.radius))
    return out
