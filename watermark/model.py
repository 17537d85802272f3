"""Loading a latent diffusion model: the bundled ``tiny`` one or a Stable-Diffusion-family
checkpoint (hub id or local diffusers folder), through one loader.

Both sources have the diffusers layout (``vae/``, ``unet/``, ``scheduler/`` and, for
text-conditioned models, ``text_encoder/`` and ``tokenizer/``), so ``tiny`` is just a folder
shipped inside this package and the real-model path is the one that runs every day.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from inversion import DDIMSchedule, ddim_schedule

TINY_PATH = Path(__file__).parent / "models" / "tiny"

# Floor on alpha_bar: a zero-terminal-SNR schedule (Lin et al., WACV 2024) has alpha_bar_T = 0,
# and every step written in eps divides by sqrt(alpha_bar_t). diffusers' EulerDiscreteScheduler
# clamps the same way (alphas_cumprod[-1] = 2**-24) for that schedule.
ALPHA_BAR_MIN = 2.0**-24


class ModelError(Exception):
    """The model cannot be loaded or does not fit the request (one-line message)."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be one of ('auto', 'cpu', 'cuda'), got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


@dataclass
class LatentDiffusion:
    """A VAE, an eps-prediction UNet and a DDIM scheduler, seen through the callables
    ``inversion`` works with. Latents are scaled (unit variance); images are in [-1, 1]."""

    name: str
    vae: Any
    unet: Any
    scheduler: Any
    text_encoder: Any = None
    tokenizer: Any = None
    key_channel: int | None = None  # from the model folder's ringmark.json, if it has one
    latent_mean: tuple[float, ...] | None = None  # likewise: per-channel mean of the training latents

    @property
    def default_key_channel(self) -> int:
        """The latent channel keys are written to by default: the last, as Tree-Ring does on
        SD, unless the model folder says otherwise (the bundled model does, with the reason)."""
        return self.latent_channels - 1 if self.key_channel is None else self.key_channel

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

    def noise_mean(self, t: int) -> torch.Tensor | float:
        """Mean of z_t over the training data, sqrt(alpha_bar_t) * E[z_0] per channel (0 if unknown).

        SD's schedule leaves signal at its last timestep (alpha_bar = 0.0047; Lin et al., "Common
        Diffusion Noise Schedules and Sample Steps are Flawed", WACV 2024), so a UNet trained on
        latents with a non-zero mean reads the image's mean from z_T's spatial mean. Sampling from
        N(0, I) then yields latents of mean ~0: measured on the bundled model, generated channel
        means 0.14, -0.12, 0.08, -0.10 against the training latents' -0.06, 0.53, 0.93, 0.33, and
        decoder inversion of its samples at -1.9 dB. Starting from the terminal marginal's mean
        (this offset on z_T; the key's Fourier bins are off the axes, so it never touches them)
        gave -0.04, 0.47, 0.83, 0.29 and -8.2 dB. Generation adds it, DDIM inversion removes it.
        """
        if self.latent_mean is None:
            return 0.0
        scale = float(self.alphas_cumprod[t]) ** 0.5
        return (scale * torch.tensor(self.latent_mean)).view(1, -1, 1, 1).to(self.device, self.dtype)

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
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device))[0]


def load_model(name: str = "tiny", device: str = "cpu", dtype: str | torch.dtype = "float32") -> LatentDiffusion:
    """Load ``tiny`` (bundled) or a diffusers checkpoint by hub id or local folder."""
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    source = str(TINY_PATH) if name == "tiny" else name
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch_dtype, low_cpu_mem_usage=False)
        unet_config = AutoencoderKL.load_config(source, subfolder="unet")
        unet_cls = getattr(diffusers, unet_config.get("_class_name", "UNet2DModel"))
        unet = unet_cls.from_pretrained(source, subfolder="unet", torch_dtype=torch_dtype, low_cpu_mem_usage=False)
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(source, subfolder="scheduler"))
        text_encoder = tokenizer = None
        if unet_cls.__name__ == "UNet2DConditionModel":
            import transformers

            text_encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder",
                                                                      torch_dtype=torch_dtype, low_cpu_mem_usage=False)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            text_encoder.to(torch_device).eval()
    except ImportError as e:
        raise ModelError(f"model {name!r} needs a package that is not installed ({e}); try pip install 'ringmark[sd]'") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    vae.to(torch_device).eval()
    unet.to(torch_device).eval()
    settings = Path(source) / "ringmark.json"
    extra = json.loads(settings.read_text()) if settings.is_file() else {}
    latent_mean = tuple(extra["latent_mean"]) if "latent_mean" in extra else None
    return LatentDiffusion(name, vae, unet, scheduler, text_encoder, tokenizer, extra.get("key_channel"), latent_mean)
