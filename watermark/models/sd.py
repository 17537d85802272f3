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

from inversion import Schedule, ddim_sample, ddim_schedule

from .latent import LatentModel
from .protocol import ModelError

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
    return {k: declared[k] for k in ("method", "iters", "ddim_steps", "refine", "photometric") if k in declared}


@dataclass
class StableDiffusionModel(LatentModel):
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
    _empty_prompt: Any = field(default=None, repr=False, compare=False)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The scheduler's alpha_bar_t in float64 (0 at t = T on a zero-terminal-SNR schedule: no
        step divides by it, so it needs no floor)."""
        return self.scheduler.alphas_cumprod.double()

    def schedule(self, steps: int, hw: tuple[int, int] | None = None) -> Schedule:
        """The timesteps and (a, b) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) of a ``steps``-step
        DDIM run with this model's scheduler (at any latent size ``hw``)."""
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
    def hold(self) -> str:
        """"eps" for eps-prediction checkpoints (Tree-Ring's inversion step), else "v"."""
        return "eps" if self.scheduler.config.prediction_type == "epsilon" else "v"

    @property
    def denoiser(self):
        return self.unet

    @property
    def latent_channels(self) -> int:
        return self.unet.config.in_channels

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

    def condition(self, prompts: list[str] | None = None) -> Any:
        """The text embeddings of ``prompts`` (None for an unconditional model; the empty prompt's
        when None, computed once: inversion asks for it at every UNet call)."""
        if not self.conditional:
            return None
        if prompts in (None, [""]):
            if self._empty_prompt is None:
                self._empty_prompt = self._embed([""])
            return self._empty_prompt
        return self._embed(prompts)

    def predict(self, z: torch.Tensor, t: int, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) from the UNet's output at z_t, whatever it predicts; ``cond`` from
        ``condition`` (the empty prompt if None)."""
        z = z.to(self.unet.dtype)
        if not self.conditional:
            out = self.unet(z, t).sample
        else:
            out = self.unet(z, t, **self._unet_inputs(z, self.condition() if cond is None else cond)).sample
        return self._as_pair(out, z, t)

    def _unet_inputs(self, z: torch.Tensor, cond: torch.Tensor) -> dict:
        """The UNet's conditioning keywords for a batch z (SDXL adds its pooled embedding and time ids)."""
        return {"encoder_hidden_states": batched(cond, len(z))}

    def _as_pair(self, out: torch.Tensor, z: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The UNet's output as (x_0, eps), for z_t = a x_0 + b eps, a = sqrt(alpha_bar_t), b = sqrt(1 - alpha_bar_t).

        v-prediction (Salimans & Ho, ICLR 2022; SD 2.x at 768 px, both bundled models):
        v = a eps - b x_0, so x_0 = a z - b v and eps = b z + a v, defined at alpha_bar = 0 too.
        diffusers' DDIMScheduler makes the same conversion inside ``step``.
        """
        kind = self.scheduler.config.prediction_type
        ab = float(self.alphas_cumprod[int(t)])
        a, b = ab**0.5, (1 - ab) ** 0.5
        if kind == "epsilon":
            return (z - b * out) / a, out
        if kind == "v_prediction":
            return a * z - b * out, b * z + a * out
        if kind == "sample":
            return out, (z - a * out) / b
        raise ModelError(f"model {self.name!r}: unsupported prediction_type {kind!r}")

    @torch.inference_mode()
    def prompt_embeds(self, prompts: list[str]) -> torch.Tensor:
        if not self.conditional:
            raise ModelError(f"model {self.name!r} is unconditional: it takes no prompt")
        return self.condition(prompts)

    @torch.inference_mode()
    def _embed(self, prompts: list[str]) -> Any:
        """The pipeline's own text encoding, without classifier-free guidance."""
        return self._pipeline().encode_prompt(prompts, self.device, 1, False)[0]

    @torch.inference_mode()
    def sample(self, z_T: torch.Tensor, steps: int = 50) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) from z_T to z_0 (scaled latents), empty prompt, guidance 1,
        on ``schedule``, the one DDIM inversion walks back; the steps land where diffusers'
        DDIMScheduler lands."""
        return ddim_sample(self.predict, z_T.to(self.device, self.dtype), self.schedule(steps, z_T.shape[-2:])).to(self.dtype)

    @torch.inference_mode()
    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1], float32 on the CPU, from z_T: ``sample`` for unconditional
        models; for text-conditioned ones, the diffusers pipeline with ``latents=z_T``."""
        if not self.conditional:
            if any(prompts or []) or guidance not in (None, 1.0):
                raise ModelError(f"model {self.name!r} is unconditional: it takes no prompt or guidance")
            return ((self.decode(self.sample(z_T, steps)).float().clamp(-1, 1) + 1) / 2).cpu()
        size = z_T.shape[-1] * self.downsample
        out = self._pipeline()(prompt=pipeline_prompts(prompts, len(z_T)), latents=z_T.to(self.device, self.dtype),
                               num_inference_steps=steps, guidance_scale=7.5 if guidance is None else guidance,
                               height=size, width=size, output_type="pt")
        return out.images.float().cpu()

    def _pipeline(self):
        """The diffusers pipeline over these modules (no copies), for generation and text encoding."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe


def batched(t: torch.Tensor, n: int) -> torch.Tensor:
    """A conditioning tensor of batch 1 repeated for a batch of n (a view)."""
    return t.expand(n, *t.shape[1:]) if len(t) == 1 and n > 1 else t


def pipeline_prompts(prompts: list[str] | None, n: int) -> list[str]:
    """One prompt per latent: one prompt is used for all, else there must be n."""
    prompts = list(prompts or [""])
    prompts = prompts * n if len(prompts) == 1 else prompts
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} latents")
    return prompts


def check_invertible(scheduler, name: str) -> None:
    """Refuse an eps-prediction checkpoint on a zero-terminal-SNR schedule (``rescale_betas_zero_snr``,
    alpha_bar_T = 0): at t = T its eps says nothing of x_0 = (z - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar),
    so neither its first sampling step nor the last inversion step is defined (Lin et al., WACV 2024,
    Sec. 3.2: such a schedule needs v-prediction)."""
    config = scheduler.config
    if config.prediction_type == "epsilon" and (config.get("rescale_betas_zero_snr", False)
                                                or float(scheduler.alphas_cumprod[-1]) == 0.0):
        raise ModelError(f"cannot load model {name!r}: it predicts eps on a zero-terminal-SNR schedule "
                         "(rescale_betas_zero_snr), where eps is undefined at t = T and the noise cannot be "
                         "inverted; ringmark takes v-prediction on such schedules")


def load(source: str, name: str, device: torch.device, dtype: torch.dtype) -> StableDiffusionModel | None:
    """The model in ``source`` (hub id or diffusers folder), or None if its layout is not this family's."""
    import diffusers
    from diffusers import AutoencoderKL, DDIMScheduler

    folder = Path(source)
    if folder.is_dir() and not ((folder / "vae").is_dir() and (folder / "unet").is_dir()):
        return None
    try:
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", dtype=dtype, low_cpu_mem_usage=False)
        unet_config = AutoencoderKL.load_config(source, subfolder="unet")
        unet_cls = getattr(diffusers, unet_config.get("_class_name", "UNet2DModel"))
        unet = unet_cls.from_pretrained(source, subfolder="unet", dtype=dtype, low_cpu_mem_usage=False)
        # clip_sample off: our sampler never clips x_0, and the pipeline must step as it does
        scheduler = DDIMScheduler.from_config(DDIMScheduler.load_config(source, subfolder="scheduler"), clip_sample=False)
        text_encoder = tokenizer = None
        if unet_cls.__name__ == "UNet2DConditionModel":
            import transformers

            text_encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder",
                                                                      dtype=dtype, low_cpu_mem_usage=False)
            tokenizer = transformers.CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
    except ImportError as e:
        raise ModelError(f"model {name!r} needs a package that is not installed ({e}); try pip install 'ringmark[sd]'") from None
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    check_invertible(scheduler, name)
    for module in (vae, unet, text_encoder):
        if module is not None:  # inference only: no parameter collects .grad (inversion.gradient backpropagates)
            module.to(device).eval().requires_grad_(False)
    return StableDiffusionModel(name, vae, unet, scheduler, text_encoder=text_encoder, tokenizer=tokenizer,
                                key_channel=settings(source).get("key_channel"), recovery=default_recovery(source))
