"""An unconditional rectified-flow UNet (the bundled ``tiny-flow``): a diffusers ``UNet2DModel``
predicting the velocity eps - x_0, a VAE, and ``FlowMatchEulerDiscreteScheduler``. diffusers has
no pipeline for it, so generation is ``sample`` (Euler) and the decoder."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from .flow import FlowModel
from .sd import default_recovery, settings


class FlowUNetModel(FlowModel):
    @property
    def conditional(self) -> bool:
        return False

    @property
    def size_multiple(self) -> int:
        """VAE downsampling times UNet downsampling, as for the SD family."""
        return self.downsample * 2 ** (len(self.transformer.config.block_out_channels) - 1)

    def condition(self, prompts: list[str] | None = None, guidance: float | None = None) -> None:
        return None

    def _velocity(self, z: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        return self.transformer(z, torch.full((len(z),), float(t), device=z.device, dtype=z.dtype)).sample

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 28, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32 on the CPU: Euler from z_T, then the decoder."""
        from .protocol import ModelError

        if any(prompts or []) or guidance not in (None, 1.0):
            raise ModelError(f"model {self.name!r} is unconditional: it takes no prompt or guidance")
        return ((self.decode(self.sample(z_T, steps)).float().clamp(-1, 1) + 1) / 2).cpu()


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> FlowUNetModel:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, UNet2DModel

    from .protocol import ModelError

    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=dtype, low_cpu_mem_usage=False)
        unet = UNet2DModel.from_pretrained(source, subfolder="unet", dtype=dtype, low_cpu_mem_usage=False)
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    for module in (vae, unet):
        module.to(device).eval().requires_grad_(False)
    size = unet.config.sample_size
    parts = SimpleNamespace(vae=vae, transformer=unet, scheduler=scheduler,
                            default_sample_size=size if isinstance(size, int) else size[0])
    return FlowUNetModel(name, parts, settings(source).get("key_channel"), default_recovery(source))
