"""Generation from a given initial noise z_T: deterministic DDIM (eta = 0) on the model's schedule."""

from __future__ import annotations

import torch

from inversion import ddim_sample

from .model import LatentDiffusion


@torch.inference_mode()
def sample_latents(
    model: LatentDiffusion, z_T: torch.Tensor, steps: int = 50, cond: torch.Tensor | None = None,
    guidance: float = 1.0, uncond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from z_T to z_0 (scaled latents), classifier-free guidance when guidance != 1.

    Steps in eps (``model.eps`` converts whatever the UNet predicts) on ``model.ddim_schedule``,
    the schedule DDIM inversion walks back, alpha_bar floored where a zero-terminal-SNR schedule
    has alpha_bar_T = 0; the steps land where diffusers' DDIMScheduler lands.
    """

    def eps(z, t):
        e = model.eps(z, t, cond)
        if guidance != 1.0:
            e_uncond = model.eps(z, t, uncond)
            e = e_uncond + guidance * (e - e_uncond)
        return e

    schedule = model.ddim_schedule(steps)
    z = z_T.to(model.device, model.dtype) + model.noise_mean(schedule.timesteps[0])
    return ddim_sample(eps, z, schedule).to(model.dtype)


@torch.inference_mode()
def decode_images(model: LatentDiffusion, z_0: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1]."""
    return (model.decode(z_0).float().clamp(-1, 1) + 1) / 2
