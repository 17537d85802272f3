"""Is an image whose key fires one of the generations logged under that key (or an edit of one)?

Two tests, both at alpha; ``confirmed`` needs both (an intersection-union test: the larger of the
two p-values is a valid p-value for "both hold", with no correction):

1. **which generation** (``noise``): the suspect's recovered z_T, outside the key's frequencies,
   against the noise of each seed logged under the key, rebuilt from the seed. Exact: the
   Beta law of a random direction's cosine, corrected for the seeds and transforms compared
   (``noise.candidates``: the key search's and turns composed with crops).
   Another generation under the key, or any image not made from a logged seed, fails it.
2. **whose content** (``fingerprint``): the suspect image's thumbnail against the thumbnail logged
   for that one generation (``fingerprint.pixel_similarity``, best over ``transforms``: the one the
   key search found and its other crop offsets, ``fingerprint.family``, and the one that aligned
   the seed's noise in test 1, among ``noise.candidates``), ranked among the same
   similarities to a reference pool of unrelated generations of the model, ``(1 + #{pool >= s}) /
   (1 + R)``: the generations logged under other keys and the model's shipped reference
   thumbnails (``reference_pool``; ``tiny``: 1,024); and at least ``fingerprint.MIN_SIMILARITY``.
   A forger who imprints a genuine image's whole z_T on other content passes test 1 and fails
   this one: a thumbnail is linear in the pixels, so no perturbation within a PSNR budget moves
   it further than the budget (``bench.forgery.thumbnail_forgery``), and the floor is what the
   rank alone does not ask (a flat cover is equally unlike every pool member; a small pull then
   wins the rank). The generation is chosen by test 1, so test 2 compares one fingerprint, not
   every candidate: no correction for the generations logged, whatever their number. Logs whose
   rows hold the older latent fingerprint (``fingerprint.LATENT_KIND``: the decoder-inverted z_0,
   pooled) are checked with it, by rank alone, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from ..io.genlog import GenerationLog
from ..scheme.geometry import IDENTITY, Transform
from ..scheme.keys import Key
from . import fingerprint, noise

POOL = 2048  # unrelated generations drawn from the log for the content test's reference pool


@dataclass(frozen=True, kw_only=True)
class Provenance:
    """``confirmed``: a logged generation under the key matches at p <= alpha; ``unconfirmed``: none
    does (a forgery, or an edit past recognition; ``unmatched`` says which test failed);
    ``unchecked``: no log was given."""

    status: str
    image_id: str | None = None  # the logged generation whose seed's noise matched best
    created: str | None = None
    noise: float | None = None  # the cosine of the seed's noise (``noise.cosines``)
    similarity: float | None = None  # the content similarity to that generation (``fingerprint``)
    p_value: float | None = None  # the larger of the two tests' p-values:
    p_noise: float | None = None  # which generation (exact; corrected for the seeds and transforms)
    p_content: float | None = None  # whose content (the rank among the reference pool)
    compared: int = 0  # logged generations under the key (with a seed and a fingerprint)
    pool: int = 0  # unrelated generations in the content test's reference
    unmatched: str | None = None  # "seed noise" or "content": the test that was not passed


UNCHECKED = Provenance(status="unchecked")


def reference_name(latent_shape: tuple[int, int, int], kind: str = fingerprint.PIXEL_KIND) -> str:
    """The file of a model's reference pool (in its null-model folders, ``io.nullfile.null_folders``)."""
    return f"fingerprints-{kind}-{'x'.join(map(str, latent_shape))}.npy"


def reference_pool(model: str, latent_shape: tuple[int, int, int], key_files=(),
                   kind: str = fingerprint.PIXEL_KIND) -> np.ndarray:
    """The ``kind`` fingerprints (R, d) of clean generations of ``model`` shipped beside its null
    models (``docs/bench/provenance/reference.py`` makes them); (0, d) where there are none."""
    from ..io.nullfile import null_folders

    for folder in null_folders(model, key_files):
        if (folder / reference_name(latent_shape, kind)).is_file():
            return np.load(folder / reference_name(latent_shape, kind)).astype(np.float32)
    d = 3 * fingerprint.PIXEL_SIDE**2 if kind == fingerprint.PIXEL_KIND else latent_shape[0] * fingerprint.SIDE**2
    return np.zeros((0, d), np.float32)


def references(model: str, latent_shape: tuple[int, int, int], key_files=()) -> dict[str, np.ndarray]:
    """The model's shipped reference pools of both fingerprint kinds, for ``check``."""
    return {kind: reference_pool(model, latent_shape, key_files, kind)
            for kind in (fingerprint.PIXEL_KIND, fingerprint.LATENT_KIND)}


def check(x: torch.Tensor, z_0: torch.Tensor, z_T: torch.Tensor, key: Key, log: GenerationLog,
          transforms: list[Transform], alpha: float, reference: dict[str, np.ndarray] | None = None,
          seeds_residual=noise.seeds_residual, aligned: list[Transform] | None = None) -> Provenance:
    """The provenance of one suspect (the image x (3, H, W) in [-1, 1], its latents z_0 and z_T,
    (C, h, w)) whose ``key`` fired. The reference pool: the log's generations under other keys,
    and ``reference[kind]`` (the model's). ``seeds_residual(key, seeds)``: the logged seeds' noise
    (``noise.seeds_residual``, or a cache of it). ``aligned``: the seed test's transforms
    (``noise.candidates``; default ``transforms``; when ``transforms`` is the identity and it
    passes, not tried); the one that matched the chosen seed best is tried by the content test too."""
    aligned = aligned or transforms
    candidates, prints = [], []  # every generation logged under the key, whichever kind its fingerprint
    for kind in (fingerprint.PIXEL_KIND, fingerprint.LATENT_KIND):
        found, own = log.fingerprints(key.key_id, kind)
        candidates += [(*c, kind) for c in found]
        prints += list(own)
    if not candidates:
        return Provenance(status="unconfirmed", compared=0, unmatched="seed noise")
    seeds, compared = seeds_residual(key, [seed for _, _, seed, _ in candidates]), len(candidates) * len(aligned)
    # every candidate, but for an image the key search found untransformed (the common case) the
    # identity first, the rest only if it does not pass: the p-value is corrected for all either way,
    # valid since the best over all is at least the identity's. An edited image gets them all: the
    # alignment of the seed's noise, finer than the key's, is what lines up its content
    tried = aligned
    if all(t == IDENTITY for t in transforms):
        cos, which = noise.aligned(z_T, key, seeds, transforms)
        if noise.p_value(float(cos.max()), noise.rank(key), compared) <= alpha:
            tried = transforms
    if tried is aligned:
        cos, which = noise.aligned(z_T, key, seeds, tried)
    best = int(torch.argmax(cos))
    p_noise = noise.p_value(float(cos[best]), noise.rank(key), compared)
    transforms = list(dict.fromkeys([*transforms, tried[int(which[best])]]))  # the seed's alignment too
    image_id, created, _, kind = candidates[best]
    parts = [p for p in (log.unrelated(key.model, key.key_id, kind, POOL), (reference or {}).get(kind))
             if p is not None and len(p)]
    pool = np.concatenate(parts) if parts else np.zeros((0, len(prints[best])), np.float32)
    logged = np.concatenate([prints[best][None], pool])
    if kind == fingerprint.PIXEL_KIND:
        sims, floor = fingerprint.pixel_similarity(x, logged, transforms), fingerprint.MIN_SIMILARITY
    else:  # a row logged before thumbnails were: its latent, by rank alone, as then
        sims, floor = fingerprint.best_similarity(z_0, logged, transforms), -np.inf
    p_content = (1 + int(np.sum(sims[1:] >= sims[0]))) / (1 + len(pool))
    p = max(p_noise, p_content)
    unmatched = ("seed noise" if p_noise > alpha else "content" if p_content > alpha or sims[0] < floor
                 else None)
    return Provenance(status="unconfirmed" if unmatched else "confirmed", image_id=image_id, created=created,
                      noise=round(float(cos[best]), 4), p_value=p,
                      # None: too few cells left to compare (``fingerprint.MIN_CELLS``)
                      similarity=round(float(sims[0]), 4) if np.isfinite(sims[0]) else None,
                      p_noise=p_noise, p_content=p_content,
                      compared=len(candidates), pool=len(pool), unmatched=unmatched)


CACHED_SEEDS = 65_536  # logged seeds' noise kept in memory, all keys together: 2 GiB on `tiny`'s 4x32x32 latents


class Checker:
    """``check`` as ``verify --log`` runs it on each ``Detection`` (``pipeline.detect(...,
    latents=True)``) and its image: over the transform the key search found and its other crop offsets
    (``fingerprint.family`` among ``transforms``), against the log's candidates and pools."""

    def __init__(self, log: GenerationLog, keys: list[Key], transforms: list[Transform], alpha: float,
                 reference: dict[str, np.ndarray] | None = None):
        self.log, self.alpha, self.reference = log, alpha, reference
        self.keys = {k.key_id: k for k in keys}
        self.transforms = {t.name: t for t in transforms}
        self.aligned = noise.candidates(transforms)
        # key id -> (its logged seeds, their residuals), least recently used first; at most
        # CACHED_SEEDS seeds in all (a long-lived server checks many keys)
        self.noise: OrderedDict[str, tuple[list[int], torch.Tensor]] = OrderedDict()

    def seeds_residual(self, key: Key, seeds: list[int]) -> torch.Tensor:
        """``noise.seeds_residual``, once per key while its logged seeds stay the same (a batch of
        suspects under one key rebuilds them once, not once per image)."""
        cached = self.noise.pop(key.key_id, None)
        if cached is None or cached[0] != seeds:
            cached = (list(seeds), noise.seeds_residual(key, seeds))
        if len(seeds) <= CACHED_SEEDS:  # more: rebuilt per suspect (8 bytes x C x H x W a seed)
            self.noise[key.key_id] = cached
            while sum(len(s) for s, _ in self.noise.values()) > CACHED_SEEDS:
                self.noise.popitem(last=False)
        return cached[1]

    def __call__(self, d, x: torch.Tensor) -> Provenance:
        """``d``: the suspect's ``Detection``; ``x``: its image (3, H, W) in [-1, 1]."""
        near = fingerprint.family(self.transforms.get(d.transform, IDENTITY), list(self.transforms.values()))
        return check(x, d.z_0, d.z_T, self.keys[d.key_id], self.log, near, self.alpha, self.reference,
                     self.seeds_residual, self.aligned)
