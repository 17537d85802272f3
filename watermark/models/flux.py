"""FLUX.1 dev and schnell: a transformer on latents packed 2 x 2 into tokens, conditioned on a
T5's token embeddings and a CLIP's pooled embedding, with the guidance strength as an input
(dev: a guidance embedding, distilled from classifier-free guidance; schnell: none).

The inversion conditions on the empty prompt and a guidance input, which ``verify`` cannot read off
an image: so the guidance is a setting of the model (``FluxModel.guidance``: the model folder's
ringmark.json ``"guidance"``, else FluxPipeline's default 3.5), the one value every image is generated
at and inverted with. ``generate`` refuses another and ``embed`` records it in the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .flow import FlowModel, mu
from .loading import load_pipeline
from .protocol import ModelError
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


@dataclass
class FluxModel(FlowModel):
    guidance: float | None = DEFAULT_GUIDANCE  # the guidance input of generation and inversion; None: schnell
    patch = 2

    @property
    def default_guidance(self) -> float | None:
        """The guidance ``embed`` generates at and records: the model's setting."""
        return self.guidance

    @torch.inference_mode()
    def _embed(self, prompts: list[str], guidance: float | None) -> dict:
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, None, device=self.device)
        return {"embeds": embeds, "pooled": pooled, "text_ids": text_ids,
                "guidance": self.guidance if guidance is None else guidance}

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

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 28, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """FluxPipeline with ``latents=``, at the model's guidance (``guidance``: None or that value)."""
        if guidance is not None and guidance != self.guidance:
            if self.guidance is None:
                raise ModelError(f"model {self.name!r} has no guidance input (FLUX schnell): it takes no guidance, "
                                 f"got {guidance}")
            raise ModelError(f"model {self.name!r} generates at guidance {self.guidance}, the input verify's inversion "
                             f"gives it (another: \"guidance\" in the model folder's ringmark.json), got {guidance}")
        return super().generate(z_T, steps, prompts, self.guidance)


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> FluxModel:
    pipe = load_pipeline("FluxPipeline", source, name, device, dtype)
    guidance = settings(source).get("guidance", DEFAULT_GUIDANCE)
    if not pipe.transformer.config.guidance_embeds:
        guidance = None  # schnell: its transformer takes no guidance
    elif isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not guidance > 0:
        raise ModelError(f"cannot load model {name!r}: \"guidance\" in its ringmark.json must be a positive number, "
                         f"got {guidance!r}")
    return FluxModel(name, pipe, settings(source).get("key_channel"), default_recovery(source),
                     guidance=None if guidance is None else float(guidance))
