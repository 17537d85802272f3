"""Decoded images in, ``Result`` rows out: the keys, the model and the settings of one
verification, loaded once and shared by every entry point that verifies images (``api.verify``,
the HTTP service, the batch scan). The work on tensors is ``pipeline.detect``; this file only
turns its decisions into the rows users store, so a row never depends on the path an image took.

    verifier = Verifier(keys, Recovery(), Decision(alpha=0.01))
    rows = verifier.run([("a.png", load_image("a.png", verifier.size))])
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .io.credentials import check_trust
from .io.images import Loaded
from .io.nullfile import no_null_note, resolve_nulls
from .models import get_model
from .pipeline import Decision, Detection, Recovery, check_key_set, check_keys, detect
from .io.genlog import GenerationLog
from .provenance.check import UNCHECKED, Checker, Provenance, references
from .scheme.geometry import search_grid
from .scheme.keys import Key
from .scheme.null import NullModel


CLIP_NOTE = ("clips are tested without a null model: the p-value is exact on average over keys, not for each key "
             "(docs/concepts/video.md)")


@dataclass
class Result:
    path: str
    watermarked: bool | None
    weak: bool | None  # p within a factor 10 of alpha, either side: weak evidence either way
    p_value: float | None
    alpha: float
    key_id: str | None
    distance: float | None
    error: str | None
    note: str | None
    warning: str | None
    inversion: str  # the look that decided (its decoder inversion); in a failure row, the recovery asked for
    iterations: int | None
    ddim_steps: int
    exact: bool
    keys_tested: int
    transform: str | None  # the rotation or crop undone before the test ("identity": none); None where
    # no key was found (the search's best candidate on an image without the key is no finding)
    batch_seconds_per_image: float | None  # the wall time of the image's batch over its images
    null_model: str | None = None  # the deciding look's null model file (``scheme.null``); None: tested without one
    runner_up_p_value: float | None = None  # the second-best key's corrected p (1 with one key)
    consistency_psnr: float | None = None  # dB to its regeneration from z_T, when the check ran
    rejected_by: str | None = None  # the defence that overruled p <= alpha ("one key", "consistency")
    provenance: str | None = None  # a watermarked image's: "confirmed", "unconfirmed", "unchecked" (no log)
    provenance_image_id: str | None = None  # the logged generation that matched best (``provenance.check``)
    provenance_created: str | None = None
    provenance_noise: float | None = None  # the cosine of its seed's noise to the recovered z_T's
    provenance_similarity: float | None = None  # of its content to the suspect's
    provenance_p_value: float | None = None  # the larger of the two tests' (``provenance.check``)
    provenance_compared: int | None = None  # generations logged under the key
    provenance_unmatched: str | None = None  # unconfirmed: the test not passed ("seed noise", "content")
    credentials: str | None = None  # its Content Credentials (C2PA): "valid", "trusted", "invalid", "absent"; None: not read
    credentials_why: str | None = None  # invalid: which checks failed
    credentials_generator: str | None = None  # the claim generator (name and version)
    credentials_signer: str | None = None  # the signing certificate's subject
    credentials_recovered: str | None = None  # the logged generation whose signed manifest the log gives back
    # (the image carries no valid credentials of its own, its key fired and the log confirmed it:
    # ``verify --credentials-out``)
    frame_p_values: list[float] | None = None  # a clip's: each latent frame's own p for the key (uncorrected)


def failure(path: str, error: str, recovery: Recovery, alpha: float, keys_tested: int) -> Result:
    """The row of an input that could not be used."""
    return Result(path=path, watermarked=None, weak=None, p_value=None, alpha=alpha, key_id=None, distance=None,
                  error=error, note=None, warning=None, inversion=recovery.label, iterations=None,
                  ddim_steps=recovery.ddim_steps, exact=recovery.exact, keys_tested=keys_tested, transform=None,
                  batch_seconds_per_image=None)


class Verifier:
    """``keys`` (one model and latent shape), the model loaded once per process, how to recover
    z_T (``recovery``) and how to decide (``decision``). ``null``: "auto" (each look's own, in the
    model's folder, then the folders of ``key_files``), "none", a file or a NullModel (for the look it
    was made for). ``size``: the image side the keys need."""

    def __init__(self, keys: list[Key], recovery: Recovery = Recovery(), decision: Decision = Decision(), *,
                 device: str = "cpu", dtype: str = "float32", null: str | os.PathLike | NullModel | None = "auto",
                 key_files: list = (), log: str | os.PathLike | None = None):
        check_key_set(keys)
        check_trust()
        self.keys, self.decision = list(keys), decision
        self.model = get_model(keys[0].model, device, dtype)
        self.recovery = recovery.for_model(self.model.default_recovery)  # the settings the rows report
        self.size = check_keys(self.keys, self.model)
        self.nulls = resolve_nulls(null, keys[0].model, self.recovery.looks(), tuple(keys[0].latent_shape), key_files)
        self.video = bool(getattr(self.model, "video", False))  # clips (3, F, H, W), ``pipeline.detect_clips``
        if self.video and log is not None:
            raise ValueError("the generation log holds images; clips cannot be checked against it yet")
        self.log = None if log is None else GenerationLog.open(log, create=False)
        self.checker = None if log is None else Checker(  # ``provenance.check``
            self.log, self.keys, search_grid(decision.search, keys[0].latent_shape[-1]), decision.alpha,
            references(keys[0].model, tuple(keys[0].latent_shape), key_files))
        missing = [role for role, n in self.nulls.items() if n is None]
        self.null_note = None if not missing or all(k.pattern == "zeros" for k in keys) else no_null_note(missing)
        if self.video:
            self.null_note = CLIP_NOTE

    @property
    def alpha(self) -> float:
        return self.decision.alpha

    def failed(self, path: str, error: str) -> Result:
        return failure(path, error, self.recovery, self.alpha, len(self.keys))

    def run(self, items: list[tuple[str, Loaded]], progress: Callable[[float], None] | None = None) -> list[Result]:
        """One batch through ``pipeline.detect``: a row per (path, decoded image), in order.
        ``progress(f)``: the share f of the batch done so far."""
        return [row for row, _ in self.verify(items, progress)]

    def verify(self, items: list[tuple[str, Loaded]], progress: Callable[[float], None] | None = None,
               evidence: str | None = None) -> list[tuple[Result, Detection]]:
        """``run``, each row with the ``Detection`` it came from (with its ``Evidence`` if asked:
        ``pipeline.detect``)."""
        t0 = time.perf_counter()
        if self.video:  # clips of different lengths: one at a time
            clips = [loaded.image if loaded.image.dim() == 4 else loaded.image[:, None] for _, loaded in items]
            detections = [d for i, clip in enumerate(clips) for d in detect(  # an image: a clip of one frame
                self.model, clip[None], self.keys, self.recovery, self.decision,
                progress=None if progress is None else lambda f, i=i: progress((i + f) / len(items)))]
        else:
            x = torch.stack([loaded.image for _, loaded in items])
            detections = detect(self.model, x, self.keys, self.recovery, self.decision, nulls=self.nulls,
                                progress=progress, evidence=evidence, latents=self.log is not None)
        per_image = round((time.perf_counter() - t0) / len(items), 4)
        return [(self.row(path, loaded, d, per_image), d) for (path, loaded), d in zip(items, detections)]

    def foreign(self, loaded: Loaded) -> str | None:
        """A warning where the image's PNG names another model than the keys': a key fires only on
        images of its own model, so p ~ 1 there says nothing about the image."""
        model = self.keys[0].model
        if loaded.model is None or loaded.model == model:
            return None
        return (f"its PNG says model {loaded.model!r} made it, but the keys are for {model!r}: a key only "
                f"fires on its own model's images; verify with a key made for {loaded.model!r}")

    def row(self, path: str, loaded: Loaded, d: Detection, seconds_per_image: float) -> Result:
        """The stored row of one image's ``Detection``."""
        r = self.recovery
        p = self.provenance(d, loaded.image)
        return Result(path=path, watermarked=d.watermarked, weak=d.weak, p_value=d.p_value, alpha=self.alpha,
                      key_id=d.key_id, distance=d.distance, error=None,
                      note="; ".join(n for n in (loaded.note, self.null_note) if n) or None,
                      warning="; ".join(w for w in (loaded.warning, self.foreign(loaded), self.claim(loaded, d)) if w)
                      or None,
                      inversion=d.look, iterations=d.iterations, ddim_steps=r.ddim_steps, exact=r.exact,
                      keys_tested=len(self.keys), transform=d.transform if d.watermarked or d.rejected_by else None,
                      batch_seconds_per_image=seconds_per_image,
                      null_model=d.null_model,
                      runner_up_p_value=d.runner_up_p_value, consistency_psnr=d.consistency_psnr,
                      rejected_by=d.rejected_by, **provenance_fields(p, self.log is not None),
                      frame_p_values=None if d.frame_p_values is None else [float(f"{v:.3g}") for v in d.frame_p_values],
                      **self.credentials(loaded, p))

    def claim(self, loaded: Loaded, d: Detection) -> str | None:
        """A warning where the image's Content Credentials name ringmark's watermark under a key
        that does not fire on it: the manifest was made for other pixels, or they were changed."""
        c = loaded.credentials
        if c is None or c.key_id is None or (d.watermarked and d.key_id == c.key_id):
            return None
        if c.key_id not in {k.key_id for k in self.keys}:
            return f"its Content Credentials name watermark key {c.key_id}, which was not among the keys tested"
        return (f"its Content Credentials ({c.status}) claim ringmark's watermark under key {c.key_id}, "
                f"which does not fire on this image: the manifest does not vouch for these pixels")

    def credentials(self, loaded: Loaded, p: Provenance | None) -> dict:
        """The image's own Content Credentials; and for a watermarked image without valid ones whose
        generation the log confirms (``p``), the id of that generation when the log kept its signed manifest."""
        c = loaded.credentials
        out = {} if c is None else {"credentials": c.status, "credentials_why": c.why,
                                    "credentials_generator": c.generator, "credentials_signer": c.signer}
        own = c is not None and c.status in ("valid", "trusted")
        if not own and p is not None and p.status == "confirmed" and self.log.has_manifest(p.image_id):
            out["credentials_recovered"] = p.image_id
        return out

    def provenance(self, d: Detection, x: torch.Tensor) -> Provenance | None:
        """A watermarked image's provenance (``provenance.check``; ``x`` its image; unchecked
        without a log), None for the others."""
        if not d.watermarked:
            return None
        return UNCHECKED if self.checker is None else self.checker(d, x)


def provenance_fields(p: Provenance | None, logged: bool) -> dict:
    """A row's provenance fields; ``logged``: a log was given (else no count of candidates)."""
    if p is None:
        return {}
    return {"provenance": p.status, "provenance_image_id": p.image_id, "provenance_created": p.created,
            "provenance_noise": p.noise, "provenance_similarity": p.similarity, "provenance_p_value": p.p_value,
            "provenance_compared": p.compared if logged else None, "provenance_unmatched": p.unmatched}
