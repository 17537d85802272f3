"""Rectified-flow transformers (SD3, FLUX) seen through the model protocol: what the families share.

The denoiser predicts the velocity u = eps - x_0 of z_s = (1 - s) x_0 + s eps (Liu et al., ICLR
2023; Esser et al., ICML 2024), so x_0 = z - s u and eps = z + (1 - s) u, and ``inversion.ddim``'s
step is the Euler step of diffusers' ``FlowMatchEulerDiscreteScheduler``. The schedule's sigmas
come from that scheduler, shifted as the family's pipeline shifts them (SD3: a fixed ``shift``;
FLUX and SD3.5 with dynamic shifting: ``mu`` from the number of image tokens). The VAE has 16
channels and a ``shift_factor``; keys live on those channels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from inversion import Schedule, ddim_sample, flow_schedule

from .latent import LatentModel


@dataclass
class FlowModel(LatentModel):
    """A VAE, a flow transformer and its text encoders (in ``pipe``, the family's diffusers pipeline)."""

    name: str
    pipe: Any
    key_channel: int | None = None
    recovery: dict = field(default_factory=dict)
    _empty_prompt: Any = field(default=None, repr=False, compare=False)

    patch: ClassVar[int] = 1  # latent cells per token along a side (FLUX packs 2 x 2)

    @property
    def vae(self):
        return self.pipe.vae

    @property
    def transformer(self):
        return self.pipe.transformer

    denoiser = transformer

    @property
    def scheduler(self):
        return self.pipe.scheduler

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    @property
    def default_size(self) -> int:
        return self.pipe.default_sample_size * self.downsample

    @property
    def conditional(self) -> bool:
        return True

    @property
    def hold(self) -> str:
        # Inversion's naive step is not reverse Euler: it calls the network at the point it starts
        # from but at the level it goes to, u(z_s', t_s), and holds v; reverse Euler, z_s = z_s' +
        # (s - s') u(z_s', t_s'), calls it at the point's own level and holds u. On tiny-flow (8
        # images, docs/bench/flow_inversion) they tie where verify runs (50-step images, encoder,
        # 10 steps: naive -2.60 dB, reverse Euler -2.52, naive ahead on all 8); reverse Euler leads on
        # exact latent round trips (-4.36 vs -4.08 dB at 10 steps, -12.83 vs -11.81 at 20). So the
        # naive step stays, one inversion for every family; holding eps is worse (-1.92, -2.53, -7.83).
        return "v"

    @property
    def size_multiple(self) -> int:
        return self.downsample * self.patch * getattr(self.transformer.config, "patch_size", 1)

    def schedule(self, steps: int, hw: tuple[int, int] | None = None) -> Schedule:
        """Sigmas and timesteps of a ``steps``-step Euler run at latent size ``hw`` (default: the
        model's), as the family's pipeline sets them."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        h, w = hw or self.latent_shape(self.default_size)[1:]
        scheduler = type(self.scheduler).from_config(self.scheduler.config)  # leave the pipeline's alone
        self._set_timesteps(scheduler, steps, int(h) * int(w) // (self.size_multiple // self.downsample) ** 2)
        return flow_schedule(scheduler.sigmas.tolist(), scheduler.timesteps.tolist())

    def _set_timesteps(self, scheduler, steps: int, tokens: int) -> None:
        kwargs = {"mu": mu(scheduler, tokens)} if scheduler.config.get("use_dynamic_shifting", False) else {}
        scheduler.set_timesteps(steps, **kwargs)

    def condition(self, prompts: list[str] | None = None, guidance: float | None = None) -> Any:
        """The prompts' encoding (the empty prompt's when None, computed once)."""
        if prompts in (None, [""]) and guidance is None:
            if self._empty_prompt is None:
                self._empty_prompt = self._embed([""], None)
            return self._empty_prompt
        return self._embed(list(prompts or [""]), guidance)

    def predict(self, z: torch.Tensor, t: float, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) from the velocity the transformer predicts at z_s, s = t / T."""
        z = z.to(self.dtype)
        u = self._velocity(z, t, self.condition() if cond is None else cond)
        s = float(t) / self.scheduler.config.num_train_timesteps
        return z - s * u, z + (1 - s) * u

    @torch.inference_mode()
    def sample(self, z_T: torch.Tensor, steps: int = 28) -> torch.Tensor:
        """Euler from z_T to z_0 with the empty prompt and no classifier-free guidance."""
        return ddim_sample(self.predict, z_T.to(self.device, self.dtype), self.schedule(steps, z_T.shape[-2:]))

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 28, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32 on the CPU: the family's pipeline with ``latents=``."""
        from .sd import pipeline_prompts

        size = z_T.shape[-1] * self.downsample
        kwargs = {} if guidance is None else {"guidance_scale": guidance}
        out = self.pipe(prompt=pipeline_prompts(prompts, len(z_T)), latents=self.pipeline_latents(z_T),
                        num_inference_steps=steps, height=size, width=size, output_type="pt", **kwargs)
        return out.images.float().cpu()

    def pipeline_latents(self, z_T: torch.Tensor) -> torch.Tensor:
        """z_T as the pipeline's ``latents=`` takes it."""
        return z_T.to(self.device, self.dtype)

    def _embed(self, prompts: list[str], guidance: float | None) -> Any:
        raise NotImplementedError

    def _velocity(self, z: torch.Tensor, t: float, cond: Any) -> torch.Tensor:
        raise NotImplementedError


def mu(scheduler, tokens: int) -> float:
    """The dynamic shift for ``tokens`` image tokens, from the scheduler's config, as diffusers'
    FLUX and SD3.5 pipelines compute it."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    c = scheduler.config
    return calculate_shift(tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                           c.get("base_shift", 0.5), c.get("max_shift", 1.15))
