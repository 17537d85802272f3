"""The verification pipeline, on tensors: images -> z_T (``recovery``: one look or more) -> the
test against each key (``scheme.detection``) -> a decision at alpha (here) -> the evidence a report
draws (``evidence``). The CLI, the Python API, the server, the batch scan and the benchmarks all
call ``detect``; it reads no files and knows models only through their protocol.

    model = get_model("tiny")
    detections = detect(model, images, [key], Recovery(), Decision(alpha=0.01))  # images (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

import torch

from .adaptive import EDITED, LOOKS, clipped_share, plan
from .evidence import Evidence, gather_evidence
from .models import DiffusionModel, ModelError
from .recovery import (DEFAULT_INVERSION, DEFAULT_ITERS, DEFAULT_STEPS, Look, LookSpec, Recovery,  # noqa: F401
                       consistency, latents_from_images, noise_from_latents, prepare, psnr, recover, recover_noise,
                       run_look, take_looks)
from .scheme.clip import match_clip
from .scheme.correction import Correction
from .scheme.detection import DEFAULT_TEST, TESTS, match_keys
from .scheme.geometry import DEFAULT_SEARCH, SEARCHES, search_grid
from .scheme.keys import DEFAULT_PATTERN, Key, KeyFileError, new_key
from .scheme.null import NullModel

from .choices import WEAK_EVIDENCE  # noqa: E402  a p-value within this factor of alpha, either side, is weak evidence


@dataclass(frozen=True)
class Decision:
    """How p-values become verdicts: watermarked when p <= ``alpha``, after undoing the rotations
    and crops of ``search`` (``scheme.geometry``; counted in the p-value), unless a defence against
    forgery overrules it (docs/concepts/threats.md): ``one_key``, an image that also matches a second key
    at alpha is not watermarked (a genuine image carries one key); ``min_consistency`` (dB), a match
    whose image regenerates from its recovered z_T further than that from itself is not
    (``consistency``; one generation per match)."""

    alpha: float = 0.01
    search: str = DEFAULT_SEARCH
    one_key: bool = False
    min_consistency: float | None = None
    test: str = DEFAULT_TEST  # how a null model makes the test exact per key (``scheme.detection.TESTS``)

    def __post_init__(self):
        if self.test not in TESTS:
            raise ValueError(f"test must be one of {TESTS}, got {self.test!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")

    def decide(self, p_value: float) -> tuple[bool, bool]:
        """(watermarked, weak): p <= alpha, and whether p is within WEAK_EVIDENCE of alpha either side."""
        return p_value <= self.alpha, self.alpha / WEAK_EVIDENCE < p_value <= self.alpha * WEAK_EVIDENCE


@dataclass(frozen=True)
class Detection:
    """The outcome for one image: the best-matching key and its p-value (corrected for the keys,
    transforms and looks: ``correction``), the decision ``p_value <= alpha``, whether it is weak
    evidence, and the look that decided."""

    watermarked: bool
    weak: bool
    p_value: float
    key_id: str
    distance: float
    raw_p_value: float
    correction: Correction  # the keys, transforms and looks p_value is corrected for
    transform: str  # the geometric transform undone before the test ("identity": none)
    iterations: int  # decoder-inversion iterations of the look that decided
    runner_up_p_value: float = 1.0  # the second-best key's corrected p (1 with one key)
    consistency_psnr: float | None = None  # dB to its regeneration, when the check ran (``consistency``)
    rejected_by: str | None = None  # the defence that overruled p <= alpha: "one key", "consistency"
    statistic: float = float("nan")  # the best key's test statistic (Student t; F for zeros) and its
    df: int = 0  # degrees of freedom: with raw_p_value, what a report draws against the null
    evidence: Evidence | None = None  # ``detect(..., evidence=...)``: what a report shows
    look: str = ""  # the look that decided (``recovery.LookSpec.label``)
    null_model: str | None = None  # the null model that look was tested with (``null_label``)
    z_0: torch.Tensor | None = field(default=None, compare=False)  # ``detect(..., latents=True)``: that look's
    z_T: torch.Tensor | None = field(default=None, compare=False)  # latents, for ``provenance.check``
    frame_p_values: tuple[float, ...] | None = None  # a clip's: each latent frame's own p for the key (``scheme.clip``)

    @property
    def keys_tested(self) -> int:
        return self.correction.keys

    @property
    def transforms_tested(self) -> int:
        return self.correction.transforms


def check_size(size: int | None) -> None:
    """Raise ValueError unless ``size`` (image side in px) is None or a positive integer."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ValueError(f"size must be a positive integer, got {size!r}")


def make_key(model: DiffusionModel, model_name: str | None = None, size: int | None = None,
             pattern: str = DEFAULT_PATTERN, radius: int | None = None, channels: tuple[int, ...] | None = None,
             seed: int | None = None) -> Key:
    """A new key for ``model`` at ``size`` px (default: the model's). ``channels`` default: all
    of them, except for Tree-Ring's own ``ring`` and ``zeros``, which go to the model's key channel."""
    check_size(size)
    shape = model.latent_shape(model.default_size if size is None else size)
    if channels is None and pattern in ("ring", "zeros"):
        channels = (model.default_key_channel,)
    return new_key(model_name or model.name, shape, pattern, radius=radius, channels=channels, seed=seed)


def check_key_set(keys: list[Key]) -> None:
    """Raise KeyFileError unless ``keys`` holds at least one key, all of one model and latent shape:
    the one check of a key set, made where keys enter (before any model loads)."""
    if not keys:
        raise KeyFileError("at least one key is needed")
    if len({(k.model, tuple(k.latent_shape)) for k in keys}) > 1:
        raise KeyFileError("all keys must be for the same model and latent shape; verify them in separate runs")


def check_keys(keys: list[Key], model: DiffusionModel) -> int:
    """Raise KeyFileError unless every key fits ``model`` at one image size; return that size."""
    check_key_set(keys)
    key = keys[0]
    size = key.latent_shape[1] * model.downsample
    try:
        fits = key.latent_shape[1] == key.latent_shape[2] and model.latent_shape(size) == tuple(key.latent_shape)
    except ModelError:
        fits = False
    if not fits:
        raise KeyFileError(f"key {key.key_id}: latent shape {list(key.latent_shape)} does not fit model "
                           f"{key.model!r}")
    return size


def detect(model: DiffusionModel, x: torch.Tensor, keys: list[Key], recovery: Recovery = Recovery(),
           decision: Decision = Decision(), *, nulls: Mapping[str, NullModel | None] | None = None,
           progress: Callable[[float], None] | None = None, evidence: str | None = None,
           taken: Mapping[str, Look] | None = None, latents: bool = False) -> list[Detection]:
    """Test each image (B, 3, H, W) in [-1, 1], at the keys' size, against ``keys``, as
    ``decision`` says (the level, the geometric search, the defences). ``nulls``: for each look the
    recovery takes (``Recovery.looks``, by role), the null model of its z_T at this size
    (``scheme.null``; ``Verifier`` finds them), which makes its p-value exact for each key; a look
    without one is tested as exact on average over keys only. ``evidence``: "all", each Detection
    also carries its ``Evidence`` with the fit (one more decoder pass per image); "hits", the
    images at p <= WEAK_EVIDENCE x alpha carry it without the fit (``Evidence.with_fit`` adds it).

    Every look is a ``Look``; the look that decided an image is the one its Detection, its
    consistency check and its evidence read. ``taken``: looks already taken at every image of x, by
    role (a look does not depend on the keys: a benchmark testing many keys on the same images
    takes each once); the others are taken here where the decision needs them. ``latents``: each
    Detection also carries its look's z_0 (C, h, w), for the generation log's content check
    (``provenance``)."""
    if getattr(model, "video", False):  # it checks the keys itself
        return detect_clips(model, x, keys, recovery, decision, progress=progress)
    size = check_keys(keys, model)
    if tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"images must be (B, 3, {size}, {size}) for these keys, got {tuple(x.shape)}")
    recovery = recovery.for_model(model.default_recovery)
    specs, nulls, taken = recovery.looks(), dict(nulls or {}), dict(taken or {})
    for role, look in taken.items():
        if look.spec != specs.get(role) or len(look.z_T) != len(x):
            raise ValueError(f"the {role} look given was not taken by this recovery at these images")
    transforms = search_grid(decision.search, keys[0].latent_shape[-1])
    first = taken["first"] if "first" in taken else run_look(model, x, specs["first"], progress=progress)
    n_looks = LOOKS if "second" in specs else 1  # every image's p is corrected for the looks it may get

    def test(look: Look, looks: int) -> list:
        return match_keys(look.z_T, keys, transforms, nulls.get(look.spec.role), looks=looks, test=decision.test)

    chosen = [(first, i, m) for i, m in enumerate(test(first, n_looks))]  # (look, index in it, match) per image
    if "second" in specs:  # adaptive: another look where the first leaves the decision unclear or cannot see
        edited = (clipped_share(x) > EDITED).tolist() if "edited" in specs else [False] * len(x)
        again, alone = plan([m for _, _, m in chosen], edited, decision.alpha, WEAK_EVIDENCE)
        for role, which, looks in (("second", again, LOOKS), ("edited", alone, 1)):
            if which:
                look = (taken[role].rows(which) if role in taken
                        else run_look(model, x[which], specs[role], z_0=first.z_0[which]))
                for j, (i, m) in enumerate(zip(which, test(look, looks))):
                    if role == "edited" or m.p_value < chosen[i][2].p_value:
                        chosen[i] = (look, j, m)
    iterations = [look.iterations[j] + (first.iterations[i] if look is not first else 0)
                  for i, (look, j, _) in enumerate(chosen)]
    z_0 = torch.stack([look.z_0[j] for look, j, _ in chosen])
    z_T = torch.stack([look.z_T[j] for look, j, _ in chosen])
    matches = [m for _, _, m in chosen]
    db = [None] * len(matches)
    hits = [i for i, m in enumerate(matches) if m.p_value <= decision.alpha]
    if decision.min_consistency is not None and hits:
        for i, v in zip(hits, consistency(model, x[hits], recovery, z_T[hits])):
            db[i] = round(float(v), 2)
    shown = [None] * len(matches)
    if evidence is not None:
        which = [i for i, m in enumerate(matches) if evidence == "all" or m.p_value <= decision.alpha * WEAK_EVIDENCE]
        found = gather_evidence(z_T[which], keys=keys, matches=[matches[i] for i in which], transforms=transforms)
        for i, e in zip(which, found):
            shown[i] = e
    kept = zip(z_0, z_T) if latents else [(None, None)] * len(matches)
    return [replace(_detection(match, decision, int(iters), psnr_db), evidence=e, look=look.spec.label,
                    null_model=null_label(nulls.get(look.spec.role)), z_0=z, z_T=n)
            for (look, _, match), iters, psnr_db, e, (z, n) in zip(chosen, iterations, db, shown, kept)]


def null_label(null: NullModel | None) -> str | None:
    """What a row says of the null model a look was tested with: its file, "given", or None (none)."""
    return None if null is None else null.meta.get("file", "given")


def _detection(match, decision: Decision, iterations: int, consistency_psnr: float | None) -> Detection:
    """One image's ``Detection`` from its best key match, the defences applied."""
    watermarked, weak = decision.decide(match.p_value)
    rejected = None
    if watermarked and decision.one_key and match.runner_up_p_value <= decision.alpha:
        rejected = "one key"
    elif watermarked and consistency_psnr is not None and consistency_psnr < decision.min_consistency:
        rejected = "consistency"
    return Detection(watermarked=watermarked and rejected is None, weak=weak, p_value=match.p_value,
                     key_id=match.key_id, distance=match.distance, raw_p_value=match.raw_p_value,
                     correction=match.correction, transform=match.transform, iterations=iterations,
                     runner_up_p_value=match.runner_up_p_value, consistency_psnr=consistency_psnr,
                     rejected_by=rejected, statistic=match.statistic, df=match.df)


def detect_clips(model: DiffusionModel, x: torch.Tensor, keys: list[Key], recovery: Recovery = Recovery(),
                 decision: Decision = Decision(), *, progress: Callable[[float], None] | None = None) -> list[Detection]:
    """``detect`` for a video model: clips x (B, 3, F, H, W) in [-1, 1], one p-value per clip by the
    test of its latent frames' mean (``scheme.clip``). A clip of F frames is tested on its first
    1 + t k (the most the VAE takes, t its temporal compression). One look (the recovery's first);
    no geometric search, no null model, no second look and none of ``decision``'s defences yet
    (only its alpha): the p-value is exact on average over keys, as the image test without a null model."""
    size = check_keys(keys, model)
    if x.dim() != 5 or tuple(x.shape[1:2]) + tuple(x.shape[3:]) != (3, size, size):
        raise ValueError(f"clips must be (B, 3, F, {size}, {size}) for these keys, got {tuple(x.shape)}")
    x = x[:, :, : 1 + model.temporal * ((x.shape[2] - 1) // model.temporal)]
    spec = recovery.for_model(model.default_recovery).looks()["first"]
    look = run_look(model, x, spec, progress=progress)
    out = []
    for m, iters in zip(match_clip(look.z_T, keys), look.iterations):
        watermarked, weak = decision.decide(m.p_value)
        out.append(Detection(watermarked=watermarked, weak=weak, p_value=m.p_value, key_id=m.key_id,
                             distance=m.distance, raw_p_value=m.raw_p_value, correction=m.correction,
                             transform="identity", iterations=int(iters), statistic=m.statistic, df=m.df,
                             look=spec.label, frame_p_values=m.frame_p_values))
    return out
