"""The Stable Diffusion family: a diffusers VAE (``AutoencoderKL``), a UNet and a DDIM scheduler,
seen through the model protocol (``watermark.models.protocol``). Serves SD 1.x/2.x checkpoints
(hub id or local diffusers folder, text-conditioned) and the bundled ``tiny`` (unconditional),
which is just such a folder shipped inside this package.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from inversion import DDIMSchedule, ddim_sample, ddim_schedule

from .protocol import ModelError

# Floor on alpha_bar: a zero-terminal-SNR schedule (Lin et al., WACV 2024) has alpha_bar_T = 0,
# and every step written in eps divides by sqrt(alpha_bar_t). diffusers' EulerDiscreteScheduler
# clamps the same way (alphas_cumprod[-1] = 2**-24) for that schedule.
ALPHA_BAR_MIN = 2.0**-24


# SD-family checkpoints whose folder declares no recovery take the one measured on the bundled
# SD-faithful model, whose VAE was trained by Stable Diffusion's recipe (its ringmark.json says
# why, with the numbers; BENCHMARKS.md, "The decision study").
FAMILY_SETTINGS = Path(__file__).parent / "tiny-sd"  # the folder whose ringmark.json has them


def settings(source: str) -> dict:
    """The ringmark.json of a model folder ({} for a hub id or a folder without one)."""
    path = Path(source) / "ringmark.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def default_recovery(source: str) -> dict:
    """The recovery a model in ``source`` declares, else the family's; reads no weights."""
    declared = settings(source).get("recovery") or settings(str(FAMILY_SETTINGS)).get("recovery", {})
    return {k: declared[k] for k in ("method", "iters", "ddim_steps") if k in declared}


@dataclass
class StableDiffusionModel:
    """A VAE, a UNet (eps-, v- or sample-prediction) and a DDIM scheduler, seen through the
    callables ``inversion`` works with. Latents are scaled (unit variance); images are in [-1, 1]."""

    name: str
    vae: Any
    unet: Any
    scheduler: Any
    text_encoder: Any = None
    tokenizer: Any = None
    key_channel: int | None = None  # from the model folder's ringmark.json, if it has one
    recovery: dict = field(default_factory=dict)  # ``default_recovery``: the folder's, else the family's
    _empty_prompt: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def default_key_channel(self) -> int:
        """The latent channel keys are written to by default: the last, as Tree-Ring does on
        SD, unless the model folder says otherwise (the bundled model does, with the reason)."""
        return self.latent_channels - 1 if self.key_channel is None else self.key_channel

    @property
    def default_recovery(self) -> dict:
        return dict(self.recovery)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The scheduler's alpha_bar_t in float64, floored at ``ALPHA_BAR_MIN``: the one place
        the floor is applied; generation, DDIM inversion and the eps conversion all read it."""
        return self.scheduler.alphas_cumprod.double().clamp(min=ALPHA_BAR_MIN)

    def ddim_schedule(self, steps: int) -> DDIMSchedule:
        """The timesteps and alpha_bar of a ``steps``-step DDIM run with this model's scheduler."""
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        config = self.scheduler.config
        if steps > config.num_train_timesteps:
            raise ValueError(f"steps must be at most {config.num_train_timesteps}, got {steps}")
        scheduler = type(self.scheduler).from_config(config)  # leave the model's scheduler state alone
        scheduler.set_timesteps(steps)
        return ddim_schedule(self.alphas_cumprod, [int(t) for t in scheduler.timesteps],
                             float(scheduler.final_alpha_cumprod))

    @property
    def prediction(self) -> str:
        """What the UNet predicts, as DDIM inversion holds it fixed: "v" for v-prediction, else "eps"."""
        return "v" if self.scheduler.config.prediction_type == "v_prediction" else "eps"

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        size = self.unet.config.sample_size
        return (size if isinstance(size, int) else size[0]) * self.downsample

    @property
    def conditional(self) -> bool:
        return self.text_encoder is not None

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: VAE downsampling times UNet downsampling."""
        return self.downsample * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        if size <= 0 or size % self.size_multiple != 0:
            raise ModelError(f"image size must be a positive multiple of {self.size_multiple} for {self.name!r}, got {size}")
        return (self.latent_channels, size // self.downsample, size // self.downsample)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the VAE encoder, scaled to unit variance."""
        return self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean * self.vae.config.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample

    def eps(self, z: torch.Tensor, t: int, cond: torch.Tensor | None = None) -> torch.Tensor:
        """eps(z, t) whatever the UNet predicts; ``cond`` is the text embedding of a conditional
        model (empty prompt if None). DDIM inversion and generation both work in eps."""
        z = z.to(self.unet.dtype)
        if not self.conditional:
            out = self.unet(z, t).sample
        else:
            if cond is None:
                cond = self.prompt_embeds([""])
            if len(cond) == 1 and len(z) > 1:
                cond = cond.expand(len(z), *cond.shape[1:])
            out = self.unet(z, t, encoder_hidden_states=cond).sample
        return self._as_eps(out, z, t)

    def _as_eps(self, out: torch.Tensor, z: torch.Tensor, t: int) -> torch.Tensor:
        """The UNet's output as eps, for z_t = sqrt(a) z_0 + sqrt(1 - a) eps, a = alpha_bar_t.

        v-prediction (Salimans & Ho, ICLR 2022; SD 2.x at 768 px): v = sqrt(a) eps - sqrt(1 - a) z_0,
        so eps = sqrt(a) v + sqrt(1 - a) z_t. diffusers' DDIMScheduler does this inside ``step``;
        inversion needs eps itself, so the conversion lives here and generation steps in eps.
        """
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return out
        a = float(self.alphas_cumprod[t])
        if kind == "v_prediction":
            return a**0.5 * out + (1 - a) ** 0.5 * z
        if kind == "sample":
            return (z - a**0.5 * out) / (1 - a) ** 0.5
        raise ModelError(f"model {self.name!r}: unsupported prediction_type {kind!r}")

    @torch.inference_mode()
    def prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        if not self.conditional:
            raise ModelError(f"model {self.name!r} is unconditional: it takes no prompt")
        if prompts == [""] and self._empty_prompt is not None:
            return self._empty_prompt
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        out = self.text_encoder(ids.to(self.device))[0]
        if prompts == [""]:
            self._empty_prompt = out  # inversion asks for it at every UNet call
        return out

    @torch.inference_mode()
    def sample(self, z_T: torch.Tensor, steps: int = 50) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from z_T to z_0 (scaled latents), empty prompt, guidance 1.

        Steps in eps (``eps`` converts whatever the UNet predicts) on ``ddim_schedule``, the
        schedule DDIM inversion walks back; the steps land where diffusers' DDIMScheduler lands.
        """
        return ddim_sample(self.eps, z_T.to(self.device, self.dtype), self.ddim_schedule(steps)).to(self.dtype)

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32 on the CPU, from z_T: ``sample`` for unconditional
        models; for text-conditioned ones, the diffusers pipeline with ``latents=z_T``."""
        if not self.conditional:
            if any(prompts or []) or guidance not in (None, 1.0):
                raise ModelError(f"model {self.name!r} is unconditional: it takes no prompt or guidance")
            return ((self.decode(self.sample(z_T, steps)).float().clamp(-1, 1) + 1) / 2).cpu()
        from diffusers import StableDiffusionPipeline

        prompts = list(prompts or [""])
        prompts = prompts * len(z_T) if len(prompts) == 1 else prompts
        if len(prompts) != len(z_T):
            raise ValueError(f"{len(prompts)} prompts for {len(z_T)} latents")
        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        size = z_T.shape[-1] * self.downsample
        out = pipe(prompt=prompts, latents=z_T.to(self.device, self.dtype), num_inference_steps=steps,
                   guidance_scale=7.5 if guidance is None else guidance, height=size, width=size, output_type="pt")
        return out.images.float().cpu()


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusionModel | None:
    """The model in ``source`` (hub id or diffusers folder), or None if its layout is not this family's."""
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler

    folder = Path(source)
    if folder.is_dir() and not ((folder / "vae").is_dir() and (folder / "unet").is_dir()):
        return None
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, low_cpu_mem_usage=False)
        unet_config = AutoencoderKL.load_config(source, subfolder="unet")
        unet_cls = getattr(diffusers, unet_config.get("_class_name", "UNet2DModel"))
        unet = unet_cls.from_pretrained(source, subfolder="unet", torch_dtype=dtype, low_cpu_mem_usage=False)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(source, subfolder="scheduler"))
        text_encoder = tokenizer = None
        if unet_cls.__name__ == "UNet2DConditionModel":
            import transformers

            text_encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder",
                                                                      torch_dtype=dtype, low_cpu_mem_usage=False)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except ImportError as e:
        raise ModelError(f"model {name!r} needs a package that is not installed ({e}); try pip install 'ringmark[sd]'") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    for module in (vae, unet, text_encoder):
        if module is not None:  # inference only: no parameter collects .grad (inversion.gradient backpropagates)
            module.to(device).eval().requires_grad_(False)
    return StableDiffusionModel(name, vae, unet, scheduler, text_encoder, tokenizer,
                                settings(source).get("key_channel"), default_recovery(source))
