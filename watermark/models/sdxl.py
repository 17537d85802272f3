"""Stable Diffusion XL: the SD family's VAE, UNet and DDIM, with two text encoders whose
penultimate hidden states are concatenated, the second one's pooled (projected) embedding and the
image's size and crop ("time ids", Podell et al., ICLR 2024) as the UNet's added conditioning.
The VAE of SDXL 1.0 overflows in float16 (``force_upcast``): it is kept in float32 then.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .loading import load_pipeline
from .sd import StableDiffusionModel, batched, default_recovery, settings


@dataclass
class StableDiffusionXLModel(StableDiffusionModel):
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    vae_float32: Any = None  # a float32 copy of a float16 VAE that must not run in float16 (force_upcast)

    @property
    def codec(self):
        return self.vae if self.vae_float32 is None else self.vae_float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(x).to(self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z).to(self.dtype)

    @torch.inference_mode()
    def _embed(self, prompts: list[str]) -> dict:
        """The pipeline's own text encoding, without classifier-free guidance."""
        embeds, _, pooled, _ = self._pipeline().encode_prompt(prompts, device=self.device,
                                                              do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}

    def _unet_inputs(self, z: torch.Tensor, cond: dict) -> dict:
        h, w = z.shape[-2] * self.downsample, z.shape[-1] * self.downsample
        # original size, crop top-left, target size: what StableDiffusionXLPipeline passes by default
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=z.dtype, device=z.device)
        return {"encoder_hidden_states": batched(cond["embeds"], len(z)),
                "added_cond_kwargs": {"text_embeds": batched(cond["pooled"], len(z)),
                                      "time_ids": batched(time_ids, len(z))}}

    def _pipeline(self):
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                         tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                                         scheduler=self.scheduler)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusionXLModel:
    """SDXL from ``source``, stepping with DDIM on its scheduler's schedule."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline("StableDiffusionXLPipeline", source, name, device, dtype)
    upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # as sd.load
    return StableDiffusionXLModel(name, pipe.vae, pipe.unet, scheduler, text_encoder=pipe.text_encoder,
                                  tokenizer=pipe.tokenizer, key_channel=settings(source).get("key_channel"),
                                  recovery=default_recovery(source), text_encoder_2=pipe.text_encoder_2,
                                  tokenizer_2=pipe.tokenizer_2,
                                  vae_float32=copy.deepcopy(pipe.vae).float() if upcast else None)
