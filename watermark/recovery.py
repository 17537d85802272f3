"""Recovery, the first room of verification: images -> z_0 (decoder inversion) -> z_T (DDIM
inversion). A ``Recovery`` is what a user asks for; ``Recovery.looks`` resolves it into the looks
at an image it takes (``LookSpec``: everything that makes one z_T, and so names and checks the null
model of that z_T, ``io.nullfile``); ``run_look`` takes one look at a batch. The test and the
decision are ``pipeline``'s, the evidence a report draws ``evidence``'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Literal, Mapping

import numpy as np
import torch

from inversion import ITERATIVE, METHODS, InversionRecord, ddim_invert, invert_decoder
from inversion.attack_aware import unclipped

from .adaptive import EDITED_ITERS, parse_refine
from .models import DiffusionModel
from .photometric import normalize, reference_quantiles

# What a recovery setting left unset falls back to when the model declares nothing (every model
# ringmark loads declares its own: ``DiffusionModel.default_recovery``, from the model folder's
# ringmark.json, measured by ``ringmark bench detect --study``; BENCHMARKS.md).
DEFAULT_INVERSION = "encoder"
from .choices import DEFAULT_ITERS, DEFAULT_STEPS  # noqa: E402 (torch-free, for the command line)


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

    def looks(self) -> dict[str, LookSpec]:
        """The looks this recovery (filled in) takes, by role (``looks``)."""
        return looks(self)

ROLES = ("first", "second", "edited")


@dataclass(frozen=True, kw_only=True)
class LookSpec:
    """One look at an image, fully resolved: how its z_T is recovered. ``first``: the recovery's
    method from the image; ``second``: the refining method's ``iters`` iterations from the first
    look's z_0, for the images the first look leaves unclear; ``edited``: the same from the first
    look's z_0 with at least ``adaptive.EDITED_ITERS``, for images with clipped pixels (tested by it
    alone; its null model is made from edited clean images). ``adaptive`` says which image gets which."""

    role: Literal["first", "second", "edited"]
    method: str
    iters: int
    ddim_steps: int
    exact: bool
    photometric: bool
    start: str | None = None  # the method whose z_0 the iterations start from (the first look's)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {self.role!r}")

    @property
    def fields(self) -> dict:
        """Everything that makes this look's z_T: what its null model records (``io.nullfile``)."""
        return {"role": self.role, "method": self.method, "iters": self.iters, "start": self.start,
                "ddim_steps": self.ddim_steps, "exact": self.exact, "photometric": self.photometric}

    @property
    def label(self) -> str:
        """What a row calls the decoder inversion of this look."""
        method = f"{self.method} {self.iters} it." if self.method in ITERATIVE else self.method
        if self.start is not None:
            method += f" from the {self.start}"
        where = {"first": "", "second": ", second look", "edited": ", edited image"}[self.role]
        return method + where + (" (photometric)" if self.photometric else "")


def looks(recovery: Recovery) -> dict[str, LookSpec]:
    """The looks a recovery (filled in: ``Recovery.for_model``) takes, by role."""
    common = dict(ddim_steps=recovery.ddim_steps, exact=recovery.exact, photometric=bool(recovery.photometric))
    out = {"first": LookSpec(role="first", method=recovery.method, iters=recovery.iters, **common)}
    if recovery.refine is not None:
        method, iters = parse_refine(recovery.refine)
        out["second"] = LookSpec(role="second", method=method, iters=iters, start=recovery.method, **common)
        if method == "attack_aware":  # what it can see through: clipped pixels
            out["edited"] = LookSpec(role="edited", method=method, iters=max(iters, EDITED_ITERS),
                                     start=recovery.method, **common)
    return out


@dataclass(frozen=True, kw_only=True, eq=False)
class Look:
    """One look taken at a batch: the recovered z_0 and z_T (float32, CPU) and the decoder
    iterations each image ran."""

    spec: LookSpec
    z_0: torch.Tensor
    z_T: torch.Tensor
    record: InversionRecord

    @property
    def iterations(self) -> list[int]:
        return self.record.iterations.tolist()

    @staticmethod
    def cat(parts: list["Look"]) -> "Look":
        """One look from the same look taken at consecutive batches."""
        if len(parts) == 1:
            return parts[0]
        k = max(p.record.residual.shape[0] for p in parts)

        def history(name):  # (K_i, B_i) side by side, NaN where a batch ran fewer iterations
            rows = [getattr(p.record, name) for p in parts]
            return torch.cat([torch.cat([r, r.new_full((k - r.shape[0], r.shape[1]), float("nan"))]) for r in rows], 1)

        record = replace(parts[0].record, iterations=torch.cat([p.record.iterations for p in parts]),
                         residual=history("residual"), pixel_error=history("pixel_error"))
        return replace(parts[0], z_0=torch.cat([p.z_0 for p in parts]), z_T=torch.cat([p.z_T for p in parts]),
                       record=record)

    def rows(self, idx: list[int]) -> "Look":
        """The same look at the images ``idx`` of its batch only."""
        r = self.record
        record = replace(r, iterations=r.iterations[idx], residual=r.residual[:, idx],
                         pixel_error=r.pixel_error[:, idx])
        return replace(self, z_0=self.z_0[idx], z_T=self.z_T[idx], record=record)


def run_look(model: DiffusionModel, x: torch.Tensor, spec: LookSpec, z_0: torch.Tensor | None = None,
             progress: Callable[[float], None] | None = None, refine_iters: int = 3) -> Look:
    """Take the look ``spec`` at images x (B, 3, H, W) in [-1, 1]: the image it sees (``prepare``),
    decoder inversion (from ``z_0``, the first look's, for a look that starts there), DDIM inversion.
    ``progress(f)``: the share f of the network calls done, after each iteration and DDIM step."""
    if spec.start is not None and z_0 is None:
        raise ValueError(f"the {spec.role} look starts from the first look's z_0: give z_0")
    recovery = _recovery_of(spec)
    per_step = 1 + refine_iters * spec.exact  # UNet calls per DDIM step
    units = spec.iters + 1 + spec.ddim_steps * per_step

    def report(done: int):
        if progress is not None:
            progress(min(1.0, done / units))

    z, record = look_latents(model, x, spec, z_0, callback=lambda d: report(d["i"] + 1))
    z_T = noise_from_latents(model, z, recovery, refine_iters,
                             callback=lambda d: report(spec.iters + 1 + (d["i"] + 1) * per_step))
    return Look(spec=spec, z_0=z.float().cpu(), z_T=z_T, record=record)


def look_latents(model: DiffusionModel, x: torch.Tensor, spec: LookSpec, z_0: torch.Tensor | None = None,
                 callback: Callable | None = None) -> tuple[torch.Tensor, InversionRecord]:
    """Stage 1 of the look ``spec`` at images x: the image it sees (``prepare``), then decoder
    inversion (from ``z_0``, where the look starts from the first look's)."""
    x_in, extra = prepare(model, x, _recovery_of(spec))
    start = {} if z_0 is None else {"z0": z_0.to(model.device, model.dtype)}
    with torch.inference_mode():
        return invert_decoder(spec.method, model.encode, model.decode, x_in.to(model.device, model.dtype),
                              iters=spec.iters, callback=callback, **start, **extra)


def _recovery_of(spec: LookSpec) -> Recovery:
    """The one-look recovery that takes the look ``spec``."""
    return Recovery(method=spec.method, iters=spec.iters, ddim_steps=spec.ddim_steps, exact=spec.exact,
                    refine="none", photometric=spec.photometric)


def take_looks(model: DiffusionModel, x: torch.Tensor, recovery: Recovery, roles=("first", "second"),
               batch: int = 32, first: Look | None = None) -> dict[str, Look]:
    """The looks ``roles`` of ``recovery`` (filled in) at every image of x, by role, in batches: for
    ``detect(taken=)`` when many keys are tested on the same images (``detect`` takes a look
    not given where its rule asks for it). ``first``: the first look, taken already."""
    specs, out = recovery.looks(), {} if first is None else {"first": first}
    for role in (r for r in ROLES if r in roles and r in specs and r not in out):
        out[role] = Look.cat([run_look(model, x[i : i + batch], specs[role],
                                       z_0=None if specs[role].start is None else out["first"].z_0[i : i + batch])
                              for i in range(0, len(x), batch)])
    return out


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
    """``recover_noise`` keeping the stage between: (z_0, z_T, decoder-inversion record) of the
    recovery's first look (``run_look``)."""
    look = run_look(model, x, recovery.for_model(model.default_recovery).looks()["first"], progress=progress,
                    refine_iters=refine_iters)
    return look.z_0, look.z_T, look.record


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
