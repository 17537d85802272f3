"""FLUX.1 dev and schnell: a transformer on latents packed 2 x 2 into tokens, conditioned on a
T5's token embeddings and a CLIP's pooled embedding, with the guidance strength as an input
(dev: a guidance embedding, distilled from classifier-free guidance; schnell: none). The
inversion conditions on the empty prompt and the guidance used at generation (default 3.5)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .flow import FlowModel, mu
from .loading import load_pipeline
from .sd import batched, default_recovery, settings

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's default guidance_scale


def pack(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/2 W/2, 4C): each 2 x 2 patch one token, as FluxPipeline packs its latents."""
    b, c, h, w = z.shape
    return z.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``pack`` undone."""
    b, _, d = tokens.shape
    return tokens.view(b, h // 2, w // 2, d // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, d // 4, h, w)


class FluxModel(FlowModel):
    patch = 2

    @torch.inference_mode()
    def _embed(self, prompts: list[str], guidance: float | None) -> dict:
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, None, device=self.device)
        return {"embeds": embeds, "pooled": pooled, "text_ids": text_ids,
                "guidance": DEFAULT_GUIDANCE if guidance is None else guidance}

    def _velocity(self, z: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        b, _, h, w = z.shape
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, z.device, z.dtype)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full((b,), float(cond["guidance"]), device=z.device, dtype=torch.float32)
        timestep = torch.full((b,), float(t) / self.scheduler.config.num_train_timesteps, device=z.device, dtype=z.dtype)
        out = self.transformer(hidden_states=pack(z), timestep=timestep, guidance=guidance,
                               pooled_projections=batched(cond["pooled"], b),
                               encoder_hidden_states=batched(cond["embeds"], b), txt_ids=cond["text_ids"],
                               img_ids=img_ids).sample
        return unpack(out, h, w)

    def _set_timesteps(self, scheduler, steps: int, tokens: int) -> None:
        """FluxPipeline's sigmas, linspace(1, 1 / steps), shifted by mu from the image tokens."""
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu(scheduler, tokens))

    def pipeline_latents(self, z_T: torch.Tensor) -> torch.Tensor:
        return pack(z_T.to(self.device, self.dtype))


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> FluxModel:
    pipe = load_pipeline("FluxPipeline", source, name, device, dtype)
    return FluxModel(name, pipe, settings(source).get("key_channel"), default_recovery(source))
