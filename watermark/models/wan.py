"""Wan 2.1 (text-to-video, diffusers' ``WanPipeline``): a rectified-flow transformer on the latents
of a causal 3D VAE, conditioned on UMT5 token embeddings; classifier-free guidance at generation,
none in inversion (the empty prompt, as for the image families).

The VAE compresses 8x in space and 4x in time: a clip of 1 + 4k frames has 1 + k latent frames, and
z_T is (C, F, H, W). ``latent_shape`` is one latent frame's (C, H, W), the shape a key is made for:
the key is written into the spatial Fourier transform of every latent frame
(``scheme.embedding.watermarked_latents(frames=)``), so one key serves clips of any length and
what is left of a clip after frames are dropped or cut still carries it; ``clip_shape`` is z_T's.
The pipeline normalises latents per channel with the VAE's ``latents_mean`` and ``latents_std``;
``encode`` and ``decode`` do the same, so the denoiser sees unit-variance latents.
"""

from __future__ import annotations

from typing import Any

import torch

from .flow import FlowModel
from .loading import load_pipeline
from .protocol import ModelError
from .sd import batched, default_recovery, pipeline_prompts, settings

MAX_SEQUENCE_LENGTH = 512  # the text tokens WanPipeline.__call__ encodes by default


class WanModel(FlowModel):
    video = True
    default_guidance = 5.0  # WanPipeline's classifier-free guidance, what embed generates at unless told

    @property
    def latent_channels(self) -> int:
        return self.vae.config.z_dim

    @property
    def downsample(self) -> int:
        return self.vae.config.scale_factor_spatial

    @property
    def temporal(self) -> int:
        """Frames per latent frame (after the first, which is its own)."""
        return self.vae.config.scale_factor_temporal

    @property
    def default_size(self) -> int:
        return 480  # Wan 2.1's 480p clips are 480 x 832; ringmark's sizes are square

    @property
    def default_frames(self) -> int:
        return 81  # WanPipeline's num_frames

    @property
    def size_multiple(self) -> int:
        return self.downsample * self.transformer.config.patch_size[1]

    def latent_frames(self, frames: int) -> int:
        if frames < 1 or (frames - 1) % self.temporal:
            raise ModelError(f"{self.name!r} takes clips of 1 + {self.temporal}k frames, got {frames}")
        return (frames - 1) // self.temporal + 1

    def clip_shape(self, size: int, frames: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of z_T for a clip of ``frames`` frames of ``size``-px squares."""
        c, h, w = self.latent_shape(size)
        return (c, self.latent_frames(frames), h, w)

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        view = (1, config.z_dim, 1, 1, 1)
        return (torch.tensor(config.latents_mean, device=z.device, dtype=z.dtype).view(view),
                torch.tensor(config.latents_std, device=z.device, dtype=z.dtype).view(view))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, 3, F, H, W) in [-1, 1] -> normalised latents (B, C, F', H', W')."""
        z = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        mean, std = self._stats(z)
        return (z - mean) / std

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(z)
        return self.vae.decode((z.to(self.vae.dtype) * std + mean)).sample

    @torch.inference_mode()
    def _embed(self, prompts: list[str], guidance: float | None) -> torch.Tensor:
        embeds, _ = self.pipe.encode_prompt(prompts, None, do_classifier_free_guidance=False,
                                            max_sequence_length=MAX_SEQUENCE_LENGTH, device=self.device)
        return embeds.to(self.dtype)

    def _velocity(self, z: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        timestep = torch.full((len(z),), float(t), device=z.device, dtype=z.dtype)
        return self.transformer(hidden_states=z, timestep=timestep, encoder_hidden_states=batched(cond, len(z)),
                                return_dict=False)[0]

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Clips (B, F, 3, H, W) in [0, 1], float32 on the CPU: WanPipeline with ``latents=z_T``."""
        size = z_T.shape[-1] * self.downsample
        frames = (z_T.shape[2] - 1) * self.temporal + 1
        kwargs = {} if guidance is None else {"guidance_scale": guidance}
        out = self.pipe(prompt=pipeline_prompts(prompts, len(z_T)), latents=z_T.to(self.device, torch.float32),
                        num_frames=frames, num_inference_steps=steps, height=size, width=size, output_type="pt",
                        max_sequence_length=MAX_SEQUENCE_LENGTH, **kwargs)
        return out.frames.float().cpu()


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> WanModel:
    """Wan 2.1 checkpoints. Its checkpoints ship a UniPC scheduler with ``flow_shift``; ringmark
    samples and inverts with the Euler step of ``FlowMatchEulerDiscreteScheduler`` at that shift
    (``inversion.ddim``), and generates with it too, so that inversion walks back the steps taken."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = load_pipeline("WanPipeline", source, name, device, dtype, extra="video", low_cpu_mem_usage=True)
    if pipe.transformer is None or getattr(pipe, "transformer_2", None) is not None or pipe.config.expand_timesteps:
        raise ModelError(f"cannot load model {name!r}: ringmark takes Wan 2.1's one transformer; two-expert "
                         "(Wan 2.2 A14B) and expanded-timestep (TI2V) checkpoints are not supported")
    config = dict(pipe.scheduler.config)
    shift = config.get("flow_shift") or config.get("shift") or 1.0
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.get("num_train_timesteps", 1000),
                                                     shift=shift)
    # the recovery verify runs unless the checkpoint's ringmark.json declares one, as for every family
    # (``models.default_recovery`` reads the same without loading): the image families' measured
    # default (models/tiny-sd/ringmark.json), not measured on a video model (there is no trained one here)
    return WanModel(name, pipe, settings(source).get("key_channel"), default_recovery(source))
