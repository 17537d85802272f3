"""Decoded images in, ``Result`` rows out: the keys, the model and the settings of one
verification, loaded once and shared by every entry point that verifies images (``api.verify``,
the HTTP service, the batch scan). The work on tensors is ``pipeline.detect``; this file only
turns its decisions into the rows users store, so a row never depends on the path an image took.

    verifier = Verifier(keys, Recovery(), alpha=0.01)
    rows = verifier.run([("a.png", load_image("a.png", verifier.size))])
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .io.images import Loaded
from .io.nullfile import NO_NULL_NOTE, resolve_null
from .models import get_model
from .pipeline import Recovery, check_keys, detect
from .scheme.geometry import DEFAULT_SEARCH, SEARCHES
from .scheme.keys import Key
from .scheme.null import NullModel


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
    inversion: str
    iterations: int | None
    ddim_steps: int
    exact: bool
    keys_tested: int
    transform: str | None  # the rotation or crop undone before the test ("identity": none)
    batch_seconds_per_image: float | None  # the wall time of the image's batch over its images
    null_model: str | None = None  # the null model's file (``scheme.null``); None: the test without one
    runner_up_p_value: float | None = None  # the second-best key's corrected p (1 with one key)
    consistency_psnr: float | None = None  # dB to its regeneration from z_T, when the check ran
    rejected_by: str | None = None  # the defence that overruled p <= alpha ("one key", "consistency")


def failure(path: str, error: str, recovery: Recovery, alpha: float, keys_tested: int) -> Result:
    """The row of an input that could not be used."""
    return Result(path, None, None, None, alpha, None, None, error, None, None, recovery.method, None,
                  recovery.ddim_steps, recovery.exact, keys_tested, None, None)


class Verifier:
    """``keys`` (one model and latent shape), the model loaded once per process, and how to
    recover z_T and decide. ``size``: the image side the keys need."""

    def __init__(self, keys: list[Key], recovery: Recovery = Recovery(), alpha: float = 0.01,
                 device: str = "cpu", dtype: str = "float32", search: str = DEFAULT_SEARCH,
                 null: str | os.PathLike | NullModel | None = "auto", key_files: list = (), one_key: bool = False,
                 min_consistency: float | None = None):
        self.check(keys, alpha, search)
        self.keys, self.alpha, self.search = list(keys), alpha, search
        self.one_key, self.min_consistency = one_key, min_consistency  # the defences (``pipeline.detect``)
        self.model = get_model(keys[0].model, device, dtype)
        self.recovery = recovery.for_model(self.model.default_recovery)  # the settings the rows report
        self.size = check_keys(self.keys, self.model)
        # ``null``: "auto" (the model's folder, then the key files' folders), "none", a file or a NullModel
        self.null = resolve_null(null, keys[0].model, self.recovery, tuple(keys[0].latent_shape), key_files)
        self.null_note = None if self.null is not None or all(k.pattern == "zeros" for k in keys) else NO_NULL_NOTE

    @staticmethod
    def check(keys: list[Key], alpha: float, search: str) -> None:
        """Raise ValueError for settings no model is needed to refuse."""
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        if search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {search!r}")
        if not keys:
            raise ValueError("at least one key is needed")
        if len({(k.model, tuple(k.latent_shape)) for k in keys}) > 1:
            raise ValueError("all keys must be for the same model and latent shape; verify them in separate runs")

    def failed(self, path: str, error: str) -> Result:
        return failure(path, error, self.recovery, self.alpha, len(self.keys))

    def run(self, items: list[tuple[str, Loaded]], progress: Callable[[float], None] | None = None) -> list[Result]:
        """One batch through ``pipeline.detect``: a row per (path, decoded image), in order.
        ``progress(f)``: the share f of the batch done so far."""
        t0 = time.perf_counter()
        x = torch.stack([loaded.image for _, loaded in items])
        detections = detect(self.model, x, self.keys, self.recovery, self.alpha, progress=progress,
                            search=self.search, null=self.null, one_key=self.one_key,
                            min_consistency=self.min_consistency)
        per_image = round((time.perf_counter() - t0) / len(items), 4)
        r = self.recovery
        return [Result(path, d.watermarked, d.weak, d.p_value, self.alpha, d.key_id, d.distance, None,
                       "; ".join(n for n in (loaded.note, self.null_note) if n) or None,
                       loaded.warning, r.method, d.iterations, r.ddim_steps, r.exact, len(self.keys), d.transform,
                       per_image, self.null.meta.get("file", "given") if self.null is not None else None,
                       d.runner_up_p_value, d.consistency_psnr, d.rejected_by)
                for (path, loaded), d in zip(items, detections)]
