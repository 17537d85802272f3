"""What a report shows of one image's test beyond its numbers: the third room of verification,
after recovery (``recovery``) and the decision (``pipeline``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models import DiffusionModel
from .recovery import psnr
from .scheme.embedding import centred_spectrum
from .scheme.geometry import IDENTITY, undo
from .scheme.keys import Key


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
