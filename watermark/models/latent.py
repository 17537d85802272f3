"""What every family's adapter shares: a VAE and a denoiser network (``denoiser``: a UNet or a
transformer), the latent sizes they imply, and the settings a model folder declares."""

from __future__ import annotations

import torch

from .protocol import ModelError

# On a CPU the VAE runs faster on a batch split into chunks of a few images than on the whole
# batch (the activations of a small chunk stay in cache): E(D(z)) for 32 latents of `tiny` (128 px)
# takes 0.39-0.45x the whole batch's time in chunks of 1, 2 or 4 (diffusers' ``enable_slicing``,
# chunks of 1: 0.37x; the differences are within this machine's timing noise), 0.28x in chunks of
# 2 with channels-last weights (``models.load_model``); chunking leaves the outputs as they were
# (docs/bench/speed). The chunk is counted in pixels, so that small images still go several at a
# time. On a GPU the whole batch is faster, and is kept.
CPU_CHUNK_PIXELS = 2 * 128 * 128


class LatentModel:
    """Mixin: needs ``vae``, ``denoiser``, ``latent_channels``, ``size_multiple``, ``name``,
    ``key_channel`` (None: the last channel) and ``recovery``."""

    @property
    def device(self) -> torch.device:
        return self.denoiser.device

    @property
    def dtype(self) -> torch.dtype:
        return self.denoiser.dtype

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_key_channel(self) -> int:
        """The latent channel keys are written to by default: the last, as Tree-Ring does on
        SD, unless the model folder says otherwise (the bundled models do, with the reason)."""
        return self.latent_channels - 1 if self.key_channel is None else self.key_channel

    @property
    def default_recovery(self) -> dict:
        return dict(self.recovery)

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size <= 0 or size % self.size_multiple != 0:
            raise ModelError(f"image size must be a positive multiple of {self.size_multiple} for {self.name!r}, got {size}")
        return (self.latent_channels, size // self.downsample, size // self.downsample)

    @property
    def codec(self):
        """The VAE that encodes and decodes (SDXL: a float32 copy where float16 overflows)."""
        return self.vae

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> the latents the denoiser sees: the posterior mean, less the VAE's shift
        factor (SD3, FLUX), times its scaling factor (unit variance)."""
        vae = self.codec
        shift = vae.config.get("shift_factor") or 0.0
        x = x.to(vae.dtype)
        return torch.cat([(vae.encode(c).latent_dist.mean - shift) * vae.config.scaling_factor for c in chunks(x)])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        vae = self.codec
        shift = vae.config.get("shift_factor") or 0.0
        z = z.to(vae.dtype) / vae.config.scaling_factor + shift
        return torch.cat([vae.decode(c).sample for c in chunks(z, self.downsample)])


def chunks(t: torch.Tensor, downsample: int = 1) -> tuple[torch.Tensor, ...]:
    """A batch of images (or of latents, ``downsample`` image pixels per latent cell along a side)
    as the VAE runs it fastest: whole on a GPU, on a CPU in chunks of about ``CPU_CHUNK_PIXELS``
    image pixels (at least one image)."""
    if t.device.type != "cpu" or len(t) <= 1:
        return (t,)
    pixels = t.shape[-2] * t.shape[-1] * downsample**2
    return t.split(max(1, CPU_CHUNK_PIXELS // pixels))
