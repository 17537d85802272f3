"""The verification pipeline, on tensors: images -> z_0 (decoder inversion) -> z_T (DDIM
inversion) -> the test against each key -> a decision at alpha. The CLI, the Python API and the
benchmarks all call it; it reads no files and knows models only through their protocol.

    model = get_model("tiny")
    detections = detect(model, images, [key], Recovery(), Decision(alpha=0.01))  # images (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np
import torch

from inversion import ITERATIVE, METHODS, InversionRecord, ddim_invert, invert_decoder
from inversion.attack_aware import unclipped

from .adaptive import EDITED, clipped_share, parse_refine, second_look
from .models import DiffusionModel, ModelError
from .photometric import normalize, reference_quantiles
from .scheme.detection import match_keys
from .scheme.embedding import centred_spectrum
from .scheme.geometry import DEFAULT_SEARCH, IDENTITY, SEARCHES, search_grid, undo
from .scheme.null import NullModel
from .scheme.keys import DEFAULT_PATTERN, Key, KeyFileError, new_key

# What a recovery setting left unset falls back to when the model declares nothing (every model
# ringmark loads declares its own: ``DiffusionModel.default_recovery``, from the model folder's
# ringmark.json, measured by ``ringmark bench detect --study``; BENCHMARKS.md).
DEFAULT_INVERSION = "encoder"
DEFAULT_ITERS = 10  # for the iterative methods, when asked for
DEFAULT_STEPS = 10
WEAK_EVIDENCE = 10.0  # a p-value within this factor of alpha, either side, is weak evidence


@dataclass(frozen=True)
class Recovery:
    """How z_T is recovered: the decoder-inversion method and its iterations, then DDIM inversion.
    A setting left None is the model's (``for_model``): ``Recovery()`` is the model's default.
    The encoder runs no iterations: ``iters`` is 0 for it once filled in, and any other count is refused."""

    method: str | None = None
    iters: int | None = None
    ddim_steps: int | None = None
    exact: bool = False  # exact (fixed-point) DDIM inversion, refine_iters per step; False: the naive step
    refine: str | None = None  # "METHOD:ITERS": adaptive, a second look at the unclear images (``adaptive``);
    # "none": no second look even where the model declares one
    photometric: bool | None = None  # undo a global brightness change first (``photometric``; attack-aware)

    def __post_init__(self):
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"inversion method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters must be non-negative, got {self.iters}")
        if self.method is not None and self.method not in ITERATIVE and self.iters:
            raise ValueError(f"the {self.method} runs no iterations; --iters {self.iters} is for the iterative "
                             f"methods ({', '.join(sorted(ITERATIVE))})")
        if self.ddim_steps is not None and self.ddim_steps < 1:
            raise ValueError(f"ddim steps must be positive, got {self.ddim_steps}")
        if self.refine not in (None, "none"):
            parse_refine(self.refine)

    @property
    def label(self) -> str:
        """What the rows call this recovery's decoder inversion."""
        label = self.method if self.refine is None else f"{self.method}, then {self.refine} where unclear"
        return label + (" (photometric)" if self.photometric else "")

    def for_model(self, defaults: Mapping) -> Recovery:
        """Every unset setting from ``defaults`` (a model's ``default_recovery``), then ringmark's.
        The iterations, the second look and the photometric correction default to the model's only
        when the method is the model's too (left unset)."""
        method = self.method or defaults.get("method", DEFAULT_INVERSION)
        if method not in ITERATIVE and self.iters:
            raise ValueError(f"the model's decoder inversion is the {method}, which runs no iterations; give "
                             f"--inversion with --iters {self.iters} ({', '.join(sorted(ITERATIVE))})")
        model_iters = defaults.get("iters", DEFAULT_ITERS) if method == defaults.get("method") else DEFAULT_ITERS
        iters = (model_iters if self.iters is None else self.iters) if method in ITERATIVE else 0
        refine = self.refine if self.refine is not None else defaults.get("refine") if self.method is None else None
        photometric = self.photometric if self.photometric is not None else \
            bool(defaults.get("photometric", False)) and self.method is None  # like refine: with the model's method
        return replace(self, method=method, iters=iters, refine=None if refine == "none" else refine,
                       ddim_steps=self.ddim_steps or defaults.get("ddim_steps", DEFAULT_STEPS), photometric=photometric)


@dataclass(frozen=True)
class Decision:
    """How p-values become verdicts: watermarked when p <= ``alpha``, after undoing the rotations
    and crops of ``search`` (``scheme.geometry``; counted in the p-value), unless a defence against
    forgery overrules it (README, "Threats"): ``one_key``, an image that also matches a second key
    at alpha is not watermarked (a genuine image carries one key); ``min_consistency`` (dB), a match
    whose image regenerates from its recovered z_T further than that from itself is not
    (``consistency``; one generation per match)."""

    alpha: float = 0.01
    search: str = DEFAULT_SEARCH
    one_key: bool = False
    min_consistency: float | None = None

    def __post_init__(self):
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha!r}")
        if self.search not in SEARCHES:
            raise ValueError(f"search must be one of {SEARCHES}, got {self.search!r}")

    def decide(self, p_value: float) -> tuple[bool, bool]:
        """(watermarked, weak): p <= alpha, and whether p is within WEAK_EVIDENCE of alpha either side."""
        return p_value <= self.alpha, self.alpha / WEAK_EVIDENCE < p_value <= self.alpha * WEAK_EVIDENCE


@dataclass(frozen=True)
class Detection:
    """The outcome for one image: the best-matching key and its p-value (Šidák-corrected over
    ``keys_tested``), the decision ``p_value <= alpha``, and whether it is weak evidence."""

    watermarked: bool
    weak: bool
    p_value: float
    key_id: str
    distance: float
    raw_p_value: float
    keys_tested: int
    transform: str  # the geometric transform undone before the test ("identity": none)
    transforms_tested: int
    iterations: int  # decoder-inversion iterations this image ran
    runner_up_p_value: float = 1.0  # the second-best key's corrected p (1 with one key)
    consistency_psnr: float | None = None  # dB to its regeneration, when the check ran (``consistency``)
    rejected_by: str | None = None  # the defence that overruled p <= alpha: "one key", "consistency"
    statistic: float = float("nan")  # the best key's test statistic (Student t; F for zeros) and its
    df: int = 0  # degrees of freedom: with raw_p_value, what a report draws against the null
    evidence: Evidence | None = None  # ``detect(..., evidence=...)``: what a report shows


@dataclass(frozen=True, eq=False)
class Evidence:
    """What a report shows of one image's test beyond its numbers (``io.report``): how well the
    recovered z_0 decodes back to the image (PSNR of D(z_0) against it; low: the image is far from
    anything the decoder makes, e.g. edited), and the magnitude of the recovered z_T's centred
    spectrum on the best key's first channel, after the transform the search undid. Both follow
    from the image and the public model alone: no key value is in them (the key is the secret;
    the report never draws its pattern). The fit costs a decoder pass: a report adds it later
    (``fit_psnr``), for the images it draws."""

    spectrum: np.ndarray  # (H, W) float32, |F(z_T)|, zero frequency at the centre
    channel: int
    radius: int  # the key's mask radius, in bins
    z_0: torch.Tensor  # (C, h, w) float32 on the CPU: the recovered latent, for the fit
    fit_psnr: float | None = None  # None until measured (``fit_psnr``)


@torch.inference_mode()
def fit_psnr(model: DiffusionModel, z_0: torch.Tensor, x: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of D(z_0) against each image x (B, 3, H, W) in [-1, 1]: how well the recovery fits."""
    return psnr(model.decode(z_0.to(model.device, model.dtype)).float().cpu(), x.float().cpu())


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


@torch.inference_mode()
def latents_from_images(model: DiffusionModel, x: torch.Tensor, recovery: Recovery = Recovery(),
                        callback: Callable | None = None, **extra) -> tuple[torch.Tensor, InversionRecord]:
    """Images (B, 3, H, W) in [-1, 1] -> (z_0, record): stage 1. ``extra``: the method's own
    keywords (``prepare``)."""
    x = x.to(model.device, model.dtype)
    recovery = recovery.for_model(model.default_recovery)
    return invert_decoder(recovery.method, model.encode, model.decode, x, iters=recovery.iters, callback=callback,
                          **extra)


@torch.inference_mode()
def noise_from_latents(model: DiffusionModel, z_0: torch.Tensor, recovery: Recovery = Recovery(),
                       refine_iters: int = 3, callback: Callable | None = None) -> torch.Tensor:
    """Scaled latents z_0 -> z_T (float32, CPU): stage 2, ``recovery.ddim_steps`` steps of the
    model's schedule; ``refine_iters`` per step when ``recovery.exact``."""
    recovery = recovery.for_model(model.default_recovery)
    schedule = model.schedule(recovery.ddim_steps, tuple(z_0.shape[-2:]))
    return ddim_invert(model.predict, z_0.to(model.device, model.dtype), schedule,
                       exact=recovery.exact, refine_iters=refine_iters, hold=model.hold,
                       callback=callback).float().cpu()


def recover_noise(model: DiffusionModel, x: torch.Tensor, recovery: Recovery = Recovery(),
                  progress: Callable[[float], None] | None = None,
                  refine_iters: int = 3) -> tuple[torch.Tensor, InversionRecord]:
    """Images -> (z_T, decoder-inversion record). ``progress(f)``: the share f of the batch's
    network calls done so far, after each iteration and DDIM step."""
    _, z_T, record = recover(model, x, recovery, progress, refine_iters)
    return z_T, record


def prepare(model: DiffusionModel, x: torch.Tensor, recovery: Recovery,
            method: str | None = None) -> tuple[torch.Tensor, dict]:
    """The images decoder inversion sees, and the keywords ``method`` (default: the recovery's) takes
    for them: with ``recovery.photometric``, a global brightness change undone (``photometric``;
    cheap, per image), else ``x`` itself; the attack-aware iteration also gets the pixels of ``x``
    that were not clipped (``inversion.attack_aware``)."""
    x_in = normalize(x, reference_quantiles(model)) if recovery.photometric else x
    extra = {"valid": unclipped(x.to(model.device))} if (method or recovery.method) == "attack_aware" else {}
    return x_in, extra


def recover(model: DiffusionModel, x: torch.Tensor, recovery: Recovery = Recovery(),
            progress: Callable[[float], None] | None = None,
            refine_iters: int = 3) -> tuple[torch.Tensor, torch.Tensor, InversionRecord]:
    """``recover_noise`` keeping the stage between: (z_0, z_T, decoder-inversion record)."""
    recovery = recovery.for_model(model.default_recovery)
    x, extra = prepare(model, x, recovery)
    per_step = 1 + refine_iters * recovery.exact  # UNet calls per DDIM step
    iters = recovery.iters  # 0 for the encoder
    units = iters + 1 + recovery.ddim_steps * per_step

    def report(done: int):
        if progress is not None:
            progress(min(1.0, done / units))

    z_0, record = latents_from_images(model, x, recovery, lambda d: report(d["i"] + 1), **extra)
    z_T = noise_from_latents(model, z_0, recovery, refine_iters,
                             callback=lambda d: report(iters + 1 + (d["i"] + 1) * per_step))
    return z_0, z_T, record


@torch.inference_mode()
def consistency(model: DiffusionModel, x: torch.Tensor, recovery: Recovery = Recovery(),
                z_T: torch.Tensor | None = None) -> np.ndarray:
    """PSNR (dB) of each image (B, 3, H, W) in [-1, 1] to the image its recovered z_T generates
    (``recovery.ddim_steps`` DDIM steps, the schedule the inversion walked back).

    A genuine watermarked image came from a z_T carrying the key, and regenerates close to
    itself; a forgery made to invert onto a watermarked z_T (imprinting) carries the key but not
    the content of that z_T, and regenerates into another image. With ``recovery.photometric`` the
    comparison is with the corrected image, the one z_T was recovered from. Costs one generation
    per image.
    """
    recovery = recovery.for_model(model.default_recovery)
    if z_T is None:
        z_T, _ = recover_noise(model, x, recovery)
    regenerated = model.generate(z_T.to(model.device, model.dtype), recovery.ddim_steps) * 2 - 1
    return psnr(regenerated, prepare(model, x, recovery)[0].cpu())  # the image the recovery saw


def psnr(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image pair, images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(4 / mse)).numpy()


def detect(model: DiffusionModel, x: torch.Tensor, keys: list[Key], recovery: Recovery = Recovery(),
           decision: Decision = Decision(), *, null: NullModel | None = None,
           progress: Callable[[float], None] | None = None, evidence: str | None = None) -> list[Detection]:
    """Test each image (B, 3, H, W) in [-1, 1], at the keys' size, against ``keys``, as
    ``decision`` says (the level, the geometric search, the defences). ``null``: the null model of
    this model, recovery and size (``scheme.null``), which makes the p-value exact for each key;
    without one it is exact on average over keys. ``evidence``: "all", each Detection also
    carries its ``Evidence`` with the fit (one more decoder pass per image); "hits", the images at
    p <= WEAK_EVIDENCE x alpha carry it without the fit (``Evidence.with_fit`` adds it)."""
    size = check_keys(keys, model)
    if tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"images must be (B, 3, {size}, {size}) for these keys, got {tuple(x.shape)}")
    recovery = recovery.for_model(model.default_recovery)
    z_0, z_T, record = recover(model, x, recovery, progress)
    transforms = search_grid(decision.search, keys[0].latent_shape[-1])
    matches = match_keys(z_T, keys, transforms, null)
    iterations = record.iterations.tolist()
    if recovery.refine is not None:  # adaptive: a second look where the first leaves the decision unclear
        method = parse_refine(recovery.refine)[0]
        x_in, extra = prepare(model, x, recovery, method=method)
        edited = (clipped_share(x) > EDITED).tolist() if method == "attack_aware" else None  # what it can see through
        matches, more = second_look(model, x_in, z_0=z_0, keys=keys, transforms=transforms, matches=matches,
                                    edited=edited, extra=extra, recovery=recovery, alpha=decision.alpha,
                                    band=WEAK_EVIDENCE, noise=lambda z: noise_from_latents(model, z, recovery))
        iterations = [a + b for a, b in zip(iterations, more)]
    db = [None] * len(matches)
    hits = [i for i, m in enumerate(matches) if m.p_value <= decision.alpha]
    if decision.min_consistency is not None and hits:
        for i, v in zip(hits, consistency(model, x[hits], recovery, z_T[hits])):
            db[i] = round(float(v), 2)
    shown = [None] * len(matches)
    if evidence is not None:
        which = [i for i, m in enumerate(matches) if evidence == "all" or m.p_value <= decision.alpha * WEAK_EVIDENCE]
        found = gather_evidence(x[which], z_0[which], z_T=z_T[which], keys=keys, matches=[matches[i] for i in which],
                                transforms=transforms, model=model if evidence == "all" else None)
        for i, e in zip(which, found):
            shown[i] = e
    return [replace(_detection(match, decision, int(iters), psnr_db), evidence=e)
            for match, iters, psnr_db, e in zip(matches, iterations, db, shown)]


@torch.inference_mode()
def gather_evidence(x: torch.Tensor, z_0: torch.Tensor, z_T: torch.Tensor, keys: list[Key], matches: list,
                    transforms: list, model: DiffusionModel | None = None) -> list[Evidence]:
    """Each image's ``Evidence``: |F(z_T)| on the best key's first channel under the transform
    that won; with ``model``, also the fit of D(z_0) to the image."""
    fit = fit_psnr(model, z_0, x) if model is not None and len(x) else [None] * len(x)
    by_id, by_name = {k.key_id: k for k in keys}, {t.name: t for t in transforms}
    out = []
    for i, match in enumerate(matches):
        key = by_id[match.key_id]
        undone = undo(z_T[i : i + 1].float(), [by_name.get(match.transform, IDENTITY)])[0, 0]
        spectrum = centred_spectrum(undone[key.channels[0]]).abs().float().numpy()
        out.append(Evidence(spectrum=spectrum, channel=key.channels[0], radius=key.radius,
                            z_0=z_0[i].float().cpu(), fit_psnr=None if fit[i] is None else round(float(fit[i]), 2)))
    return out


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
                     keys_tested=match.keys_tested, transform=match.transform,
                     transforms_tested=match.transforms_tested, iterations=iterations,
                     runner_up_p_value=match.runner_up_p_value, consistency_psnr=consistency_psnr,
                     rejected_by=rejected, statistic=match.statistic, df=match.df)
