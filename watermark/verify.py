"""Recovering z_T from images (decoder inversion, then DDIM inversion) and testing it against keys."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inversion import METHODS, ddim_invert, invert_decoder

from .detect import score, sidak
from .keys import Key
from .model import LatentDiffusion

# Chosen from `ringmark bench detect` (BENCHMARKS.md, 24 + 24 images, previous bundled UNet): at
# equal time (10 iterations, 0.7 s/image) the forward step had clean AUC 0.997 against adam's
# 0.977 and the same mean attacked AUC (0.948, 0.951); 20 would take verify past 1 s per image.
# On the current UNet at N = 100 (BENCHMARKS.md): mean attacked AUC 0.957/0.954/0.957 at 5/10/20
# iterations, 0.945/0.930 at 50/100; clean AUC 0.999 (encoder alone 1.000, adam 0.999).
DEFAULT_INVERSION = "fixed_point"
DEFAULT_ITERS = 10


@dataclass(frozen=True)
class Recovery:
    method: str = DEFAULT_INVERSION
    iters: int = DEFAULT_ITERS
    ddim_steps: int = 50
    exact: bool = False

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"inversion method must be one of {sorted(METHODS)}, got {self.method!r}")
        if self.iters < 0:
            raise ValueError(f"iters must be non-negative, got {self.iters}")
        if self.ddim_steps < 1:
            raise ValueError(f"ddim steps must be positive, got {self.ddim_steps}")


@torch.inference_mode()
def recover_noise(model: LatentDiffusion, x: torch.Tensor, recovery: Recovery = Recovery()):
    """Images (B, 3, H, W) in [-1, 1] -> (z_T, decoder-inversion record), empty prompt, guidance 1."""
    x = x.to(model.device, model.dtype)
    kwargs = {} if recovery.method == "encoder" else {"iters": recovery.iters}
    if recovery.method == "gradient":
        with torch.inference_mode(False):
            z_0, record = invert_decoder("gradient", model.encode, model.decode, x.clone(), **kwargs)
    else:
        z_0, record = invert_decoder(recovery.method, model.encode, model.decode, x, **kwargs)
    return invert_ddim(model, z_0, recovery), record


@torch.inference_mode()
def invert_ddim(model: LatentDiffusion, z_0: torch.Tensor, recovery: Recovery = Recovery(),
                refine_iters: int = 3) -> torch.Tensor:
    """Scaled latents z_0 -> z_T (float32, CPU), empty prompt, guidance 1; the generation's
    ``model.noise_mean`` offset removed. ``refine_iters``: per step, for exact inversion."""
    extra = {"cond": model.prompt_embeds([""])} if model.conditional else {}
    schedule = model.ddim_schedule(recovery.ddim_steps)
    z_T = ddim_invert(model.eps, z_0.to(model.dtype), schedule, exact=recovery.exact, refine_iters=refine_iters,
                      hold=model.prediction, extra_args=extra)
    return (z_T - model.noise_mean(schedule.timesteps[0])).float().cpu()


@dataclass
class KeyTest:
    key_id: str
    p_value: float  # corrected for the number of keys tested (Šidák)
    distance: float
    raw_p_value: float
    keys_tested: int


def match_keys(z_T: torch.Tensor, keys: list[Key]) -> list[KeyTest]:
    """For each z_T, the best of ``keys`` with its Šidák-corrected p-value."""
    per_key = [score(z_T, key) for key in keys]
    out = []
    for b in range(len(z_T)):
        best = min(range(len(keys)), key=lambda i: (per_key[i][b].p_value, per_key[i][b].distance))
        s = per_key[best][b]
        out.append(KeyTest(keys[best].key_id, sidak(s.p_value, len(keys)), s.distance, s.p_value, len(keys)))
    return out
