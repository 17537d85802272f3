"""Is an image whose key fires one of the generations logged under that key (or an edit of one)?

The suspect's latent (the deciding look's z_0) is compared with the fingerprint of every
generation logged under the key (``fingerprint.best_similarity``: best over ``transforms``, which
``Verifier`` makes the transform the key search found with its other crop offsets,
``fingerprint.family``: best over all 414 raised unrelated generations' similarity from 0.25 to
0.53 on average and lost most rotated images, docs/bench/provenance/tiny.json). The p-value of
the best match is a rank test against a reference pool of unrelated generations of the same
model: the chance that an unrelated generation
matches the suspect at least as well, ``(1 + #{pool >= s}) / (1 + R)``, times the candidates
compared (Bonferroni). The pool: generations of the model logged under other keys, and the
model's own reference fingerprints where it ships them (``reference_pool``; ``tiny``: 1,024 clean
generations). Under the null — the suspect is not an edit of any candidate, and the candidates
are as unrelated to it as the pool is — it is super-uniform; its smallest value is m / (R + 1),
so a key shared by m logged generations needs a pool of well over 100 m to confirm at 0.01.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..io.genlog import GenerationLog
from ..scheme.geometry import IDENTITY, Transform
from . import fingerprint

POOL = 2048  # unrelated generations drawn from the log for the reference pool


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """``confirmed``: a logged generation under the key matches at p <= alpha; ``unconfirmed``: none
    does (a forgery, or an edit past recognition); ``unchecked``: no log was given."""

    status: str
    image_id: str | None = None  # the best-matching logged generation
    created: str | None = None
    similarity: float | None = None
    p_value: float | None = None  # of the best match, corrected for ``compared``
    compared: int = 0  # logged generations under the key
    pool: int = 0  # unrelated generations in the reference


UNCHECKED = Provenance(status="unchecked")


def reference_name(latent_shape: tuple[int, int, int]) -> str:
    """The file of a model's reference pool (in its null-model folders, ``io.nullfile.null_folders``)."""
    return f"fingerprints-{fingerprint.LATENT_KIND}-{'x'.join(map(str, latent_shape))}.npy"


def reference_pool(model: str, latent_shape: tuple[int, int, int], key_files=()) -> np.ndarray:
    """The latent fingerprints (R, d) of clean generations of ``model`` shipped beside its null
    models (``docs/bench/provenance/reference.py`` makes them); (0, d) where there are none."""
    from ..io.nullfile import null_folders

    for folder in null_folders(model, key_files):
        if (folder / reference_name(latent_shape)).is_file():
            return np.load(folder / reference_name(latent_shape)).astype(np.float32)
    return np.zeros((0, latent_shape[0] * fingerprint.SIDE**2), np.float32)


def check(z_0: torch.Tensor, key_id: str, model: str, log: GenerationLog, transforms: list[Transform],
          alpha: float, reference: np.ndarray | None = None) -> Provenance:
    """The provenance of one suspect (its latent z_0, (C, h, w)) whose key ``key_id`` fired.
    The reference pool: the log's generations under other keys, and ``reference`` (the model's)."""
    candidates, own = log.fingerprints(key_id, fingerprint.LATENT_KIND)
    parts = [p for p in (log.unrelated(model, key_id, fingerprint.LATENT_KIND, POOL), reference)
             if p is not None and len(p)]
    if not candidates:
        return Provenance(status="unconfirmed", compared=0, pool=sum(len(p) for p in parts))
    sims = fingerprint.best_similarity(z_0, np.concatenate([own, *parts]), transforms)
    own, ref = sims[: len(candidates)], sims[len(candidates) :]
    best = int(np.argmax(own))
    p = min(1.0, (1 + int(np.sum(ref >= own[best]))) / (1 + len(ref)) * len(candidates))
    image_id, created = candidates[best]
    return Provenance(status="confirmed" if p <= alpha else "unconfirmed", image_id=image_id, created=created,
                      similarity=round(float(own[best]), 4), p_value=p, compared=len(candidates), pool=len(ref))


class Checker:
    """``check`` as ``verify --log`` runs it on each ``Detection`` (``pipeline.detect(...,
    latents=True)``): over the transform the key search found and its other crop offsets
    (``fingerprint.family`` among ``transforms``), against the log's candidates and pools."""

    def __init__(self, log: GenerationLog, model: str, transforms: list[Transform], alpha: float,
                 reference: np.ndarray | None = None):
        self.log, self.model, self.alpha, self.reference = log, model, alpha, reference
        self.transforms = {t.name: t for t in transforms}

    def __call__(self, d) -> Provenance:
        near = fingerprint.family(self.transforms.get(d.transform, IDENTITY), list(self.transforms.values()))
        return check(d.z_0, d.key_id, self.model, self.log, near, self.alpha, self.reference)
