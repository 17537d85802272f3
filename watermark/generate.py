"""Generation from a given initial noise z_T with diffusers' DDIMScheduler (eta = 0)."""

from __future__ import annotations

import torch

from .model import LatentDiffusion


@torch.inference_mode()
def sample_latents(
    model: LatentDiffusion, z_T: torch.Tensor, steps: int = 50, cond: torch.Tensor | None = None,
    guidance: float = 1.0, uncond: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from z_T to z_0 (scaled latents), classifier-free guidance when guidance != 1."""
    # model.eps converts whatever the UNet predicts to eps, so the scheduler steps in eps
    scheduler = type(model.scheduler).from_config(model.scheduler.config, prediction_type="epsilon")
    scheduler.set_timesteps(steps)
    z = z_T.to(model.device, model.dtype) + model.noise_mean(int(scheduler.timesteps[0]))
    for t in scheduler.timesteps:
        eps = model.eps(z, int(t), cond)
        if guidance != 1.0:
            eps = model.eps(z, int(t), uncond) + guidance * (eps - model.eps(z, int(t), uncond))
        z = scheduler.step(eps, t, z).prev_sample
    return z


@torch.inference_mode()
def decode_images(model: LatentDiffusion, z_0: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1]."""
    return (model.decode(z_0).float().clamp(-1, 1) + 1) / 2
