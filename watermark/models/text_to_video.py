"""ModelScope-style text-to-video (diffusers' ``TextToVideoSDPipeline``: ModelScope T2V, zeroscope,
and the bundled ``tiny-video``): Stable Diffusion's 2D VAE applied to each frame, as LaVie, the
seed paper's video model, applies it, and a spatio-temporal UNet (``UNet3DConditionModel``) on a
DDIM schedule, conditioned on CLIP text embeddings. diffusers has marked the pipeline deprecated
(no fixes after 0.33.1); it runs in the diffusers ringmark requires, and the tests run it. For new
video models, Wan (``models/wan.py``) is the family diffusers maintains.

The VAE does not compress time: a clip of F frames has F latent frames, and z_T is (C, F, H, W).
As for Wan (``models/wan.py``), ``latent_shape`` is one latent frame's (C, H, W), the shape a key is
made for, and the key is written into the spatial Fourier transform of every latent frame.
Encoding and decoding run frame by frame (the pipeline's ``decode_latents`` does the same); the
UNet sees the whole clip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .loading import load_pipeline
from .protocol import ModelError
from .sd import StableDiffusionModel, check_invertible, default_recovery, pipeline_prompts, settings

PIPELINE_GUIDANCE = 9.0  # TextToVideoSDPipeline's default guidance_scale
PIPELINE_FRAMES = 16  # and its default num_frames


def frames_as_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B F, C, H, W): each frame an image."""
    return x.transpose(1, 2).flatten(0, 1)


def batch_as_frames(x: torch.Tensor, frames: int) -> torch.Tensor:
    """The inverse of ``frames_as_batch``."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


@dataclass
class TextToVideoModel(StableDiffusionModel):
    video = True
    temporal = 1  # frames per latent frame: the 2D VAE leaves time alone
    guidance: float | None = None  # the folder's ringmark.json "guidance", else the pipeline's
    frames: int | None = None  # the folder's ringmark.json "frames", else the pipeline's
    pipe: Any = field(default=None, repr=False, compare=False)  # the loaded pipeline (made once: see ``_pipeline``)

    @property
    def default_guidance(self) -> float:
        return PIPELINE_GUIDANCE if self.guidance is None else self.guidance

    @property
    def default_frames(self) -> int:
        return PIPELINE_FRAMES if self.frames is None else self.frames

    def latent_frames(self, frames: int) -> int:
        if frames < 1:
            raise ModelError(f"{self.name!r} takes clips of 1 frame or more, got {frames}")
        return frames

    def clip_shape(self, size: int, frames: int) -> tuple[int, int, int, int]:
        """(C, F, H, W) of z_T for a clip of ``frames`` frames of ``size``-px squares."""
        c, h, w = self.latent_shape(size)
        return (c, self.latent_frames(frames), h, w)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Clips (B, 3, F, H, W) in [-1, 1] -> scaled latents (B, C, F, h, w), frame by frame."""
        return batch_as_frames(super().encode(frames_as_batch(x)), x.shape[2])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return batch_as_frames(super().decode(frames_as_batch(z)), z.shape[2])

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Clips (B, F, 3, H, W) in [0, 1], float32 on the CPU: TextToVideoSDPipeline with ``latents=z_T``."""
        size = z_T.shape[-1] * self.downsample
        out = self._pipeline()(prompt=pipeline_prompts(prompts, len(z_T)), latents=z_T.to(self.device, self.dtype),
                               num_frames=z_T.shape[2], num_inference_steps=steps, height=size, width=size,
                               guidance_scale=self.default_guidance if guidance is None else guidance,
                               output_type="pt")
        return out.frames.float().cpu()

    def _pipeline(self):
        """The pipeline over these modules, made once: diffusers marks TextToVideoSDPipeline
        deprecated (no fixes after 0.33.1; it works in the diffusers ringmark requires, and
        tests/test_text_to_video.py checks it) and warns at each construction."""
        if self.pipe is None:
            from diffusers import TextToVideoSDPipeline

            self.pipe = TextToVideoSDPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                              unet=self.unet, scheduler=self.scheduler)
            self.pipe.set_progress_bar_config(disable=True)
        return self.pipe


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> TextToVideoModel:
    """TextToVideoSDPipeline checkpoints. Sampled and inverted with DDIM on the checkpoint's
    schedule (``clip_sample`` off, as for the SD family); generation uses the same scheduler."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline("TextToVideoSDPipeline", source, name, device, dtype, extra="video")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    check_invertible(pipe.scheduler, name)
    declared = settings(source)
    return TextToVideoModel(name, pipe.vae, pipe.unet, pipe.scheduler, text_encoder=pipe.text_encoder,
                            tokenizer=pipe.tokenizer, key_channel=declared.get("key_channel"),
                            recovery=default_recovery(source), guidance=declared.get("guidance"),
                            frames=declared.get("frames"), pipe=pipe)
