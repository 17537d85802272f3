"""Stable Diffusion XL: the SD family's VAE, UNet and DDIM, with two text encoders whose
penultimate hidden states are concatenated, the second one's pooled (projected) embedding and the
image's size and crop ("time ids", Podell et al., ICLR 2024) as the UNet's added conditioning.
The VAE of SDXL 1.0 overflows in float16 (``force_upcast``): it is kept in float32 then.

The empty prompt: under the pipeline's ``force_zeros_for_empty_prompt`` (SDXL's default),
StableDiffusionXLPipeline's unconditional embedding is zeros, not the text encoding of "". Here the
empty prompt is that embedding, in generation and inversion alike, so an image generated with no
prompt is the unconditional sample that inversion walks back, whatever the guidance.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from .loading import load_pipeline
from .sd import StableDiffusionModel, batched, check_invertible, default_recovery, pipeline_prompts, settings


@dataclass
class StableDiffusionXLModel(StableDiffusionModel):
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    vae_float32: Any = None  # a float32 copy of a float16 VAE that must not run in float16 (force_upcast)
    force_zeros: bool = True  # the pipeline's force_zeros_for_empty_prompt: the empty prompt is the zero embedding

    @property
    def codec(self):
        return self.vae if self.vae_float32 is None else self.vae_float32

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return super().encode(x).to(self.dtype)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return super().decode(z).to(self.dtype)

    @torch.inference_mode()
    def _embed(self, prompts: list[str]) -> dict:
        """The pipeline's own text encoding, without classifier-free guidance; an empty prompt's
        rows are zeros under ``force_zeros`` (the pipeline's unconditional embedding)."""
        embeds, _, pooled, _ = self._pipeline().encode_prompt(prompts, device=self.device,
                                                              do_classifier_free_guidance=False)
        if self.force_zeros:
            empty = torch.tensor([p == "" for p in prompts], device=embeds.device)
            embeds = torch.where(empty[:, None, None], torch.zeros_like(embeds), embeds)
            pooled = torch.where(empty[:, None], torch.zeros_like(pooled), pooled)
        return {"embeds": embeds, "pooled": pooled}

    def _unet_inputs(self, z: torch.Tensor, cond: dict) -> dict:
        h, w = z.shape[-2] * self.downsample, z.shape[-1] * self.downsample
        # original size, crop top-left, target size: what StableDiffusionXLPipeline passes by default
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=z.dtype, device=z.device)
        return {"encoder_hidden_states": batched(cond["embeds"], len(z)),
                "added_cond_kwargs": {"text_embeds": batched(cond["pooled"], len(z)),
                                      "time_ids": batched(time_ids, len(z))}}

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32 on the CPU: the diffusers pipeline with ``latents=z_T``
        on ``condition``'s embeddings of the prompts (the pipeline's negative: zeros under
        ``force_zeros``, else the encoding of "")."""
        cond = self.condition(pipeline_prompts(prompts, len(z_T)))
        size = z_T.shape[-1] * self.downsample
        out = self._pipeline()(prompt_embeds=cond["embeds"], pooled_prompt_embeds=cond["pooled"],
                               latents=z_T.to(self.device, self.dtype), num_inference_steps=steps,
                               guidance_scale=7.5 if guidance is None else guidance, height=size, width=size,
                               output_type="pt")
        return out.images.float().cpu()

    def _pipeline(self):
        from diffusers import StableDiffusionXLPipeline

        # add_watermarker=False: diffusers would otherwise stamp its invisible watermark on the images
        # whenever the invisible-watermark package is installed
        pipe = StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoder, text_encoder_2=self.text_encoder_2,
                                         tokenizer=self.tokenizer, tokenizer_2=self.tokenizer_2, unet=self.unet,
                                         scheduler=self.scheduler, force_zeros_for_empty_prompt=self.force_zeros,
                                         add_watermarker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusionXLModel:
    """SDXL from ``source``, stepping with DDIM on its scheduler's schedule."""
    from diffusers import DDIMScheduler

    pipe = load_pipeline("StableDiffusionXLPipeline", source, name, device, dtype, add_watermarker=False)
    upcast = pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # as sd.load
    check_invertible(scheduler, name)
    return StableDiffusionXLModel(name, pipe.vae, pipe.unet, scheduler, text_encoder=pipe.text_encoder,
                                  tokenizer=pipe.tokenizer, key_channel=settings(source).get("key_channel"),
                                  recovery=default_recovery(source), text_encoder_2=pipe.text_encoder_2,
                                  tokenizer_2=pipe.tokenizer_2,
                                  vae_float32=copy.deepcopy(pipe.vae).float() if upcast else None,
                                  force_zeros=bool(pipe.config.get("force_zeros_for_empty_prompt", True)))
