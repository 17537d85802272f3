"""Stable Diffusion 3 / 3.5: an MMDiT on unpacked 16-channel latents, conditioned on two CLIPs'
and a T5's token embeddings and the CLIPs' pooled embeddings; classifier-free guidance at
generation, none in inversion (the empty prompt, as for SD)."""

from __future__ import annotations

from typing import Any

import torch

from .flow import FlowModel
from .loading import load_pipeline
from .sd import batched, default_recovery, settings


class StableDiffusion3Model(FlowModel):
    @torch.inference_mode()
    def _embed(self, prompts: list[str], guidance: float | None) -> dict:
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, None, None, device=self.device,
                                                       do_classifier_free_guidance=False)
        return {"embeds": embeds, "pooled": pooled}

    def _velocity(self, z: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        timestep = torch.full((len(z),), float(t), device=z.device, dtype=z.dtype)
        return self.transformer(hidden_states=z, timestep=timestep, encoder_hidden_states=batched(cond["embeds"], len(z)),
                                pooled_projections=batched(cond["pooled"], len(z))).sample


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusion3Model:
    pipe = load_pipeline("StableDiffusion3Pipeline", source, name, device, dtype)
    return StableDiffusion3Model(name, pipe, settings(source).get("key_channel"), default_recovery(source))
