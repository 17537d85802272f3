"""The verification pipeline, on tensors: images -> z_0 (decoder inversion) -> z_T (DDIM
inversion) -> the test against each key -> a decision at alpha. The CLI, the Python API and the
benchmarks all call it; it reads no files and knows models only through their protocol.

    model = get_model("tiny")
    detections = detect(model, images, [key], Recovery(), alpha=0.01)  # images (B, 3, H, W) in [-1, 1]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import numpy as np
import torch

from inversion import METHODS, InversionRecord, ddim_invert, invert_decoder

from .models import DiffusionModel, ModelError
from .scheme.detection import match_keys
from .scheme.geometry import DEFAULT_SEARCH, search_grid
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
    A setting left None is the model's (``for_model``): ``Recovery()`` is the model's default."""

    method: str | None = None
    iters: int | None = None
    ddim_steps: int | None = None
    exact: bool = False

    def __post_init__(self):
        if self.method is not None and self.method not in METHODS:
            raise ValueError(f"inversion method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.iters is not None and self.iters < 0:
            raise ValueError(f"iters must be non-negative, got {self.iters}")
        if self.ddim_steps is not None and self.ddim_steps < 1:
            raise ValueError(f"ddim steps must be positive, got {self.ddim_steps}")

    def for_model(self, defaults: Mapping) -> Recovery:
        """Every unset setting from ``defaults`` (a model's ``default_recovery``), then ringmark's.
        The iterations default to the model's only when the method is the model's too."""
        method = self.method or defaults.get("method", DEFAULT_INVERSION)
        model_iters = defaults.get("iters", DEFAULT_ITERS) if method == defaults.get("method") else DEFAULT_ITERS
        return replace(self, method=method, iters=model_iters if self.iters is None else self.iters,
                       ddim_steps=self.ddim_steps or defaults.get("ddim_steps", DEFAULT_STEPS))


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
    return new_key(model_name or model.name, shape, pattern, radius, channels, seed)


def check_keys(keys: list[Key], model: DiffusionModel) -> int:
    """Raise KeyFileError unless every key fits ``model`` at one image size; return that size."""
    if not keys:
        raise ValueError("at least one key is needed")
    if len({tuple(k.latent_shape) for k in keys}) > 1:
        raise KeyFileError("all keys must have the same latent shape; verify them in separate runs")
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
                        callback: Callable | None = None) -> tuple[torch.Tensor, InversionRecord]:
    """Images (B, 3, H, W) in [-1, 1] -> (z_0, record): stage 1."""
    x = x.to(model.device, model.dtype)
    recovery = recovery.for_model(model.default_recovery)
    return invert_decoder(recovery.method, model.encode, model.decode, x, iters=recovery.iters, callback=callback)


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
    recovery = recovery.for_model(model.default_recovery)
    per_step = 1 + refine_iters * recovery.exact  # UNet calls per DDIM step
    iters = 0 if recovery.method == "encoder" else recovery.iters
    units = iters + 1 + recovery.ddim_steps * per_step

    def report(done: int):
        if progress is not None:
            progress(min(1.0, done / units))

    z_0, record = latents_from_images(model, x, recovery, lambda d: report(d["i"] + 1))
    z_T = noise_from_latents(model, z_0, recovery, refine_iters,
                             callback=lambda d: report(iters + 1 + (d["i"] + 1) * per_step))
    return z_T, record


@torch.inference_mode()
def consistency(model: DiffusionModel, x: torch.Tensor, recovery: Recovery = Recovery(),
                z_T: torch.Tensor | None = None) -> np.ndarray:
    """PSNR (dB) of each image (B, 3, H, W) in [-1, 1] to the image its recovered z_T generates
    (``recovery.ddim_steps`` DDIM steps, the schedule the inversion walked back).

    A genuine watermarked image came from a z_T carrying the key, and regenerates close to
    itself; a forgery made to invert onto a watermarked z_T (imprinting) carries the key but not
    the content of that z_T, and regenerates into another image. Costs one generation per image.
    """
    recovery = recovery.for_model(model.default_recovery)
    if z_T is None:
        z_T, _ = recover_noise(model, x, recovery)
    regenerated = model.generate(z_T.to(model.device, model.dtype), recovery.ddim_steps) * 2 - 1
    return psnr(regenerated, x.cpu())


def psnr(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """PSNR (dB) of each image pair, images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return (10 * torch.log10(4 / mse)).numpy()


def decide(p_value: float, alpha: float) -> tuple[bool, bool]:
    """(watermarked, weak): the decision p <= alpha, and whether p is within WEAK_EVIDENCE of alpha."""
    return p_value <= alpha, alpha / WEAK_EVIDENCE < p_value <= alpha * WEAK_EVIDENCE


def detect(model: DiffusionModel, x: torch.Tensor, keys: list[Key], recovery: Recovery = Recovery(),
           alpha: float = 0.01, progress: Callable[[float], None] | None = None,
           search: str = DEFAULT_SEARCH, null: NullModel | None = None, one_key: bool = False,
           min_consistency: float | None = None) -> list[Detection]:
    """Test each image (B, 3, H, W) in [-1, 1], at the keys' size, against ``keys``, undoing
    the rotations and crops of ``search`` (``scheme.geometry``) before the test. ``null``: the
    null model of this model, recovery and size (``scheme.null``), which makes the p-value exact
    for each key; without one it is exact on average over keys.

    Defences against forgery (README, "Threats"): ``one_key``, an image that also matches a second
    key of the keyring at alpha is not watermarked (a genuine image carries one key); and
    ``min_consistency`` (dB), a match whose image regenerates from its recovered z_T further than
    that from itself is not watermarked (``consistency``; one generation per match)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    size = check_keys(keys, model)
    if tuple(x.shape[1:]) != (3, size, size):
        raise ValueError(f"images must be (B, 3, {size}, {size}) for these keys, got {tuple(x.shape)}")
    transforms = search_grid(search, keys[0].latent_shape[-1])
    z_T, record = recover_noise(model, x, recovery, progress)
    matches = match_keys(z_T, keys, transforms, null)
    psnr = [None] * len(matches)
    hits = [i for i, m in enumerate(matches) if m.p_value <= alpha]
    if min_consistency is not None and hits:
        for i, v in zip(hits, consistency(model, x[hits], recovery, z_T[hits])):
            psnr[i] = round(float(v), 2)
    out = []
    for match, iters, db in zip(matches, record.iterations.tolist(), psnr):
        watermarked, weak = decide(match.p_value, alpha)
        rejected = None
        if watermarked and one_key and match.runner_up_p_value <= alpha:
            rejected = "one key"
        elif watermarked and db is not None and db < min_consistency:
            rejected = "consistency"
        out.append(Detection(watermarked and rejected is None, weak, match.p_value, match.key_id, match.distance,
                             match.raw_p_value, match.keys_tested, match.transform, match.transforms_tested,
                             int(iters), match.runner_up_p_value, db, rejected))
    return out
