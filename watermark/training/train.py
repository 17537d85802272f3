"""Train the bundled ``tiny`` latent diffusion model: the VAE, the UNet, then the VAE's encoder
once more on the UNet's own samples.

    python -m watermark.training.train --work .train --out watermark/models/tiny

Data: photographs shipped inside Python packages (scikit-image, matplotlib, scikit-learn:
``pip install .[train]``), as random crops with scale and flip augmentation; one photo
(``HELD_OUT``) never enters training and is used only to evaluate. Seeds are fixed; every stage
checkpoints to ``--work`` and resumes from there, so training may run in several sittings.
A GPU is used when present. The model card names the command of the shipped model, its time on
a GPU and the CPU-budget flags.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

# package:name; scikit-image's colour photos, the colour photos matplotlib and scikit-learn ship,
# and scikit-image's grey photos and textures (read as grey RGB) for more texture
TRAIN_PHOTOS = (
    "skimage:astronaut",
    "skimage:chelsea",
    "skimage:rocket",
    "skimage:hubble_deep_field",
    "skimage:immunohistochemistry",
    "skimage:retina",
    "skimage:stereo_motorcycle",
    "matplotlib:grace_hopper",
    "sklearn:china",
    "sklearn:flower",
    "skimage:brick",
    "skimage:grass",
    "skimage:gravel",
    "skimage:camera",
)
HELD_OUT = "skimage:coffee"


def make_vae() -> AutoencoderKL:
    """4 latent channels, 4x downsampling; no mid-block attention (cost grows with area)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        mid_block_add_attention=False,
        sample_size=128,
    )


def make_unet(channels: tuple[int, ...] = (32, 64, 128), layers: int = 1, attention_levels: int = 1) -> UNet2DModel:
    """Unconditional UNet; self-attention only in the lowest attention_levels."""
    plain = len(channels) - attention_levels
    return UNet2DModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        layers_per_block=layers,
        block_out_channels=channels,
        down_block_types=("DownBlock2D",) * plain + ("AttnDownBlock2D",) * attention_levels,
        up_block_types=("AttnUpBlock2D",) * attention_levels + ("UpBlock2D",) * plain,
        attention_head_dim=32,
        norm_num_groups=32,
    )


def make_flow_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Rectified flow z_s = (1 - s) x_0 + s eps, the UNet predicting the velocity eps - x_0 at
    timestep 1000 s (Esser et al., ICML 2024), no shift: what ``models.flow_unet`` loads."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)


def make_scheduler(zero_snr: bool = True, prediction_type: str = "v_prediction") -> DDIMScheduler:
    """SD's scaled-linear betas (1000 steps, no clipping). ``zero_snr``: rescaled to zero terminal
    SNR with trailing timesteps (Lin et al., "Common Diffusion Noise Schedules and Sample Steps
    are Flawed", WACV 2024), so z_T carries no signal; the paper pairs it with v-prediction."""
    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be one of ('epsilon', 'v_prediction'), got {prediction_type!r}")
    common = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                  clip_sample=False, prediction_type=prediction_type)
    if zero_snr:
        # set_alpha_to_one=False: the last trailing step (from t = 19 of 50) lands on alpha_bar_0,
        # not on 1, where it would be the denoiser's x0 alone, which DDIM inversion cannot undo
        # (measured on the bundled model: 50 + 50 step round trip -6 dB against -26 dB; model card)
        return DDIMScheduler(**common, rescale_betas_zero_snr=True, timestep_spacing="trailing", set_alpha_to_one=False)
    return DDIMScheduler(**common, set_alpha_to_one=False, steps_offset=1)


def load_photo(name: str) -> torch.Tensor:
    """One photo shipped in a package ("skimage:coffee") as a (3, H, W) float tensor in [-1, 1]."""
    package, _, photo = name.partition(":")
    if package == "skimage":
        import skimage.data

        image = getattr(skimage.data, photo)()
        if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
            image = image[0]
    elif package == "matplotlib":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data(f"{photo}.jpg") as f:
            image = np.asarray(Image.open(f).convert("RGB"))
    elif package == "sklearn":
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{photo}.jpg")
    else:
        raise ValueError(f"photo must be 'skimage:NAME', 'matplotlib:NAME' or 'sklearn:NAME', got {name!r}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    image = torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1)
    return image.float() / 127.5 - 1.0


def random_crops(
    photos: list[torch.Tensor], n: int, size: int, generator: torch.Generator, max_scale: float = 4.0
) -> torch.Tensor:
    """n crops of side size*s, s log-uniform in [1, max_scale], resized to size, random h-flip."""
    out = torch.empty(n, 3, size, size, device=photos[0].device)
    for i in range(n):
        photo = photos[int(torch.randint(len(photos), (1,), generator=generator))]
        _, h, w = photo.shape
        top_scale = min(max_scale, min(h, w) / size)
        s = math.exp(float(torch.rand((), generator=generator)) * math.log(max(top_scale, 1.0)))
        side = max(size, int(size * s))
        y = int(torch.randint(h - side + 1, (1,), generator=generator))
        x = int(torch.randint(w - side + 1, (1,), generator=generator))
        crop = photo[None, :, y : y + side, x : x + side]
        if side != size:
            crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.flip(-1)
        out[i] = crop[0].clamp(-1, 1)
    return out


class Checkpoint:
    """Resumable training state in one file; written atomically."""

    def __init__(self, path: Path):
        self.path = path

    def load(self):
        return torch.load(self.path, weights_only=False) if self.path.exists() else None

    def save(self, state: dict) -> None:
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def _log(stage: str, step: int, total: int, loss: float, t0: float) -> None:
    click.echo(f"[{stage}] step {step}/{total} loss {loss:.4f} {time.time() - t0:.1f}s", err=True)


def ldm_loss(vae: AutoencoderKL, x: torch.Tensor, generator: torch.Generator, mse: float = 0.0) -> torch.Tensor:
    """LDM/SD's VAE loss: L1 (+ mse * MSE) reconstruction of a decoded posterior sample, + 1e-6 KL
    relative to the loss summed over pixels (1e-6 against the *mean* L1 would be ~10^4 times stronger)."""
    posterior = vae.encode(x).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(x.device)
    recon = vae.decode(posterior.mean + posterior.std * noise).sample
    return (recon - x).abs().mean() + mse * (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean() / x[0].numel()


def train_vae(photos, work: Path, steps: int, batch: int, size: int, lr: float, mse: float, max_scale: float,
              device, seed: int) -> AutoencoderKL:
    """Stage 1: ``ldm_loss``; AdamW, cosine learning rate with warm-up."""
    torch.manual_seed(seed)
    vae = make_vae().to(device)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 50, num_training_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    ckpt, start = Checkpoint(work / "vae.pt"), 0
    if state := ckpt.load():
        vae.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), gen.set_state(state["gen"])
        start = state["step"]
    t0 = time.time()
    for step in range(start, steps):
        x = random_crops(photos, batch, size, gen, max_scale).to(device)
        loss = ldm_loss(vae, x, gen, mse)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("vae", step + 1, steps, loss.item(), t0)
            ckpt.save(dict(model=vae.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                           gen=gen.get_state(), step=step + 1))
    return vae.eval()


def perturb(z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents near z, like a sampler's imperfect ones: white noise of std U(0, 0.5) and a
    shift of each channel's mean of std 0.3 (scaled, unit-variance units)."""
    n = len(z)
    sigma = 0.5 * torch.rand(n, 1, 1, 1, generator=generator)
    shift = 0.3 * torch.randn(n, z.shape[1], 1, 1, generator=generator)
    noise = torch.randn(z.shape, generator=generator)
    return z + (sigma * noise + shift).to(z.device)


def as_png(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """What a saved image reads back as: clamped to [-1, 1], plus uniform noise of one 8-bit level."""
    noise = (torch.rand(x.shape, generator=generator) - 0.5) * (2 / 255)
    return x.clamp(-1, 1) + noise.to(x.device)


def finetune_vae(vae: AutoencoderKL, photos, steps: int, batch: int, size: int, lr: float, cycle: float, device,
                 seed: int) -> AutoencoderKL:
    """Stage 2: L1 on the decoded posterior *mean* at the working resolution, plus ``cycle`` times
    the cycle loss ||E(D(z~)) - z~||^2 on perturbed latents z~ (scaled units), constant lr.
    ``cycle = 0`` is Stable Diffusion's recipe instead (``tiny-sd``): stage 1's loss at 128 px,
    with no term that ties the encoder to the decoder.

    Stage 1 alone leaves a decoder that ignores some latent directions at 128 px (it learned on
    64 px crops, with latent noise), and E(D(z)) far from z: decoder inversion cannot recover
    what the image does not show. The cycle term makes the decoder render every latent direction
    the encoder can read back, near the data and near where a sampler's latents fall.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        scale = 1.0 / float(vae.encode(random_crops(photos, 256, size, gen, 2.0)).latent_dist.mean.std())
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        x = random_crops(photos, batch, size, gen, max_scale=2.0).to(device)
        if cycle == 0:  # Stable Diffusion's recipe: stage 1's loss, nothing that ties E to D
            loss = ldm_loss(vae, x, gen)
        else:
            mean = vae.encode(x).latent_dist.mean
            loss = (vae.decode(mean).sample - x).abs().mean()
            z = perturb(mean.detach() * scale, gen)
            x_z = as_png(vae.decode(z / scale).sample, gen)
            loss = loss + cycle * (vae.encode(x_z).latent_dist.mean * scale - z).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("vae-finetune", step + 1, steps, loss.item(), t0)
    return vae.eval()


def refit_encoder(vae: AutoencoderKL, unet: UNet2DModel, scheduler: DDIMScheduler, photos, latents: torch.Tensor,
                  steps: int, batch: int, lr: float, n_samples: int, device, seed: int) -> AutoencoderKL:
    """Stage 4: the encoder alone (the decoder, and so every generated image, unchanged) learns to
    read back the UNet's own samples, E(D(z)) = z for z from 50-step DDIM, and the training
    latents, while L1 keeps D(E(x)) = x on real crops. Decoder inversion starts from E(x) and
    iterates on E(D(z)) - E(x), so both stages of verification gain."""
    from ..models.sd import StableDiffusionModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = StableDiffusionModel("training", vae.eval(), unet.eval(), scheduler)
    scale = vae.config.scaling_factor
    with torch.no_grad():
        z_gen = torch.cat([model.sample(torch.randn(min(256, n_samples - i), 4, 32, 32, generator=gen).to(device), 50)
                           for i in range(0, n_samples, 256)])
        targets = torch.cat([z_gen, latents[: n_samples].to(device)])
        images = torch.cat([vae.decode(targets[i : i + 256] / scale).sample for i in range(0, len(targets), 256)])
    vae.decoder.requires_grad_(False)
    vae.post_quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    vae.encoder.train()
    t0 = time.time()
    for step in range(steps):
        x = random_crops(photos, batch, 128, gen, max_scale=2.0).to(device)
        loss = (vae.decode(vae.encode(x).latent_dist.mean).sample - x).abs().mean()
        idx = torch.randint(len(targets), (batch,), generator=gen).to(device)
        z_back = vae.encode(as_png(images[idx], gen)).latent_dist.mean * scale
        loss = loss + (z_back - targets[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("encoder-refit", step + 1, steps, loss.item(), t0)
    vae.requires_grad_(True)
    return vae.eval()


@torch.no_grad()
def encode_dataset(vae, photos, n: int, size: int, device, seed: int) -> torch.Tensor:
    """Posterior means of n training crops (size px): the latents the UNet learns."""
    gen = torch.Generator().manual_seed(seed)
    means = []
    for i in range(0, n, 64):
        x = random_crops(photos, min(64, n - i), size, gen, max_scale=2.0).to(device)
        means.append(vae.encode(x).latent_dist.mean.cpu())
    return torch.cat(means)


def denoiser_step(unet, loss: torch.Tensor, opt, sched, ema) -> None:
    """One optimiser step of a denoiser on ``loss``: gradients clipped to norm 1, the lr schedule
    and the EMA of the weights advanced."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
    opt.step()
    sched.step()
    ema.step(unet.parameters())


def train_unet(latents, work: Path, steps: int, batch: int, lr: float, device, seed: int,
               scheduler, arch: dict | None = None) -> UNet2DModel:
    """MSE on the scheduler's prediction target (eps or v; for a flow scheduler the velocity
    eps - x_0 at s drawn logit-normal, as SD3 trains); AdamW, cosine lr, EMA of the weights."""
    flow = isinstance(scheduler, FlowMatchEulerDiscreteScheduler)
    torch.manual_seed(seed)
    unet = make_unet(**(arch or {})).to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 50, num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=3 / 4)
    gen = torch.Generator().manual_seed(seed)
    ckpt, start = Checkpoint(work / "unet.pt"), 0
    if state := ckpt.load():
        unet.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), ema.load_state_dict(state["ema"])
        gen.set_state(state["gen"])
        start = state["step"]
    ema.to(device)
    t0 = time.time()
    for step in range(start, steps):
        z0 = latents[torch.randint(len(latents), (batch,), generator=gen)]
        noise = torch.randn(z0.shape, generator=gen)
        if flow:
            s = torch.sigmoid(torch.randn(batch, generator=gen))[:, None, None, None]
            zt, target, t = (1 - s) * z0 + s * noise, noise - z0, s.flatten() * scheduler.config.num_train_timesteps
        else:
            t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=gen)
            zt = scheduler.add_noise(z0, noise, t)
            target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(z0, noise, t)
        loss = F.mse_loss(unet(zt.to(device), t.to(device)).sample, target.to(device))
        denoiser_step(unet, loss, opt, sched, ema)
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("unet", step + 1, steps, loss.item(), t0)
        if (step + 1) % 1000 == 0 or step + 1 == steps:
            ckpt.save(dict(model=unet.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                           ema=ema.state_dict(), gen=gen.get_state(), step=step + 1))
    ema.copy_to(unet.parameters())
    return unet.eval()


def choose_key_channel(out: Path, n: int, device: str, seed: int) -> dict:
    """Per latent channel: ring keys, n watermarked + n clean images, Tree-Ring's six attacks, the
    default recovery; the channel with the highest mean AUC over the seven conditions wins."""
    from ..bench.attacks import ATTACKS, attack
    from ..bench.detect import auc, make_images, noise, own_and_foreign
    from ..models import load_model
    from ..pipeline import Recovery
    from ..scheme.keys import new_key

    def p_values(images, key):  # each image's p-value for ``key``, the model's default recovery, no search
        z_T, _ = noise(model, images, Recovery(), 32)
        return own_and_foreign(z_T, [key], "none")[0]

    model = load_model(str(out), device)
    shape = model.latent_shape(model.default_size)
    rng = np.random.default_rng(seed)
    per_channel = {}
    for c in range(model.latent_channels):
        key = new_key(str(out), shape, pattern="ring", channels=(c,), seed=seed + c)
        wm = make_images(model, [key] * n, list(range(n)), 50)
        clean = make_images(model, [key] * n, list(range(n)), 50, watermark=False)
        aucs, tprs = {}, {}
        for a in ATTACKS:
            p_wm = p_values([attack(im, a, rng) for im in wm], key)
            p_clean = p_values([attack(im, a, rng) for im in clean], key)
            aucs[a], tprs[a] = auc(p_wm, p_clean), float(np.mean(p_wm <= 0.01))
        per_channel[c] = {"auc": aucs, "tpr_at_alpha_0.01": tprs, "mean_auc": float(np.mean(list(aucs.values())))}
        click.echo(f"[key-channel] {c}: mean AUC {per_channel[c]['mean_auc']:.3f}, clean TPR {tprs['none']:.2f}",
                   err=True)
    best = max(per_channel, key=lambda c: per_channel[c]["mean_auc"])
    return {"key_channel": best, "per_channel": per_channel,
            "why": f"Measured on this model by python -m watermark.training.train --stage key-channel ({n} watermarked + {n} "
                   f"clean images per channel, ring keys, default recovery, clean and Tree-Ring's six attacks): "
                   f"the highest mean AUC over the seven conditions, {per_channel[best]['mean_auc']:.3f}."}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=".train", show_default=True,
              help="Checkpoints (resume from here).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="watermark/models/tiny",
              show_default=True, help="Where the trained model is saved (diffusers layout).")
@click.option("--stage", type=click.Choice(["all", "vae", "unet", "refit", "key-channel"]), default="all",
              show_default=True, help="'unet' trains on the VAE in --out, 'refit' refits its encoder on the "
              "UNet's samples, 'key-channel' measures which latent channel keys go to.")
@click.option("--schedule", type=click.Choice(["zero-snr", "sd", "flow"]), default="zero-snr", show_default=True,
              help="zero-snr: zero terminal SNR, trailing timesteps (Lin et al.); sd: SD's schedule; flow: rectified flow.")
@click.option("--prediction", type=click.Choice(["v_prediction", "epsilon"]), default="v_prediction",
              show_default=True)
@click.option("--vae-steps", default=5000, show_default=True)
@click.option("--vae-batch", default=64, show_default=True)
@click.option("--vae-lr", default=5e-4, show_default=True)
@click.option("--vae-mse", default=0.0, show_default=True, help="Weight of the MSE term beside L1.")
@click.option("--vae-max-scale", default=2.0, show_default=True, help="Largest crop, in units of the crop size.")
@click.option("--vae-finetune-steps", default=1500, show_default=True, help="Stage 2, at 128 px.")
@click.option("--vae-finetune-batch", default=16, show_default=True)
@click.option("--vae-cycle", default=3.0, show_default=True, type=click.FloatRange(0),
              help="Weight of the cycle term in stage 2; 0: Stable Diffusion's recipe (tiny-sd).")
@click.option("--unet-steps", default=2000, show_default=True)
@click.option("--unet-batch", default=256, show_default=True)
@click.option("--unet-lr", default=5e-4, show_default=True)
@click.option("--unet-channels", default="32,64,128", show_default=True, help="UNet block widths.")
@click.option("--unet-layers", default=1, show_default=True, help="UNet layers per block.")
@click.option("--unet-attention-levels", default=2, show_default=True, help="Lowest levels with self-attention.")
@click.option("--n-latents", default=32768, show_default=True, help="Training crops encoded for the UNet.")
@click.option("--refit-steps", default=800, show_default=True, help="Stage 4: encoder refit steps.")
@click.option("--refit-samples", default=2048, show_default=True, help="UNet samples the encoder refits on.")
@click.option("--key-channel-n", default=32, show_default=True, help="Images per class and channel.")
@click.option("--seed", default=20241127, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def main(work, out, stage, schedule, prediction, vae_steps, vae_batch, vae_lr, vae_mse, vae_max_scale,
         vae_finetune_steps, vae_finetune_batch, vae_cycle, unet_steps, unet_batch, unet_lr, unet_channels, unet_layers,
         unet_attention_levels, n_latents, refit_steps, refit_samples, key_channel_n, seed, device):
    """Train the VAE (64 px crops, then 128 px with a cycle term), fix its scaling factor, train the
    UNet on 128 px crops, refit the encoder on the UNet's samples, pick the key channel."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    photos = [load_photo(name).to(device) for name in TRAIN_PHOTOS] if stage != "key-channel" else []
    record_path = out / "training.json"
    record = json.loads(record_path.read_text()) if stage != "all" and record_path.exists() else {}
    record.update(seed=seed, torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  train_photos=list(TRAIN_PHOTOS), held_out=HELD_OUT)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    settings_path = out / "ringmark.json"  # where the model's loader finds it
    settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
    settings.pop("latent_mean", None), settings.pop("latent_mean_note", None)  # v1's terminal-mean offset: gone
    cache = work / f"latents_{n_latents}.pt"  # the encoded crops, shared by resumed or parallel runs
    if stage in ("all", "vae"):
        t0 = time.time()
        scaling = stage_vae(photos, work, out=out, cache=cache, steps=vae_steps, batch=vae_batch, lr=vae_lr,
                            mse=vae_mse, max_scale=vae_max_scale, finetune_steps=vae_finetune_steps,
                            finetune_batch=vae_finetune_batch, cycle=vae_cycle, n_latents=n_latents, device=device,
                            seed=seed)
        record.update(vae_steps=vae_steps, vae_batch=vae_batch, vae_lr=vae_lr, vae_mse=vae_mse,
                      vae_max_scale=vae_max_scale, vae_finetune_steps=vae_finetune_steps,
                      vae_finetune_batch=vae_finetune_batch, vae_cycle=vae_cycle, scaling_factor=scaling,
                      vae_device=device_name, vae_seconds=round(time.time() - t0, 1))
    if stage in ("all", "unet"):
        t0 = time.time()
        arch = dict(channels=tuple(int(c) for c in unet_channels.split(",")), layers=unet_layers,
                    attention_levels=unet_attention_levels)
        scheduler = make_flow_scheduler() if schedule == "flow" else make_scheduler(schedule == "zero-snr", prediction)
        stage_unet(photos, work, out=out, cache=cache, scheduler=scheduler, arch=arch, steps=unet_steps,
                   batch=unet_batch, lr=unet_lr, n_latents=n_latents, device=device, seed=seed)
        record.update(schedule=schedule, prediction=prediction, unet_steps=unet_steps, unet_batch=unet_batch,
                      unet_lr=unet_lr, n_latents=n_latents, unet_channels=unet_channels, unet_layers=unet_layers,
                      unet_attention_levels=unet_attention_levels, unet_device=device_name,
                      unet_seconds=round(time.time() - t0, 1))
    if stage in ("all", "refit") and refit_steps > 0:
        t0 = time.time()
        stage_refit(photos, out, cache=cache, steps=refit_steps, batch=vae_finetune_batch, samples=refit_samples,
                    device=device, seed=seed)
        record.update(refit_steps=refit_steps, refit_samples=refit_samples, refit_device=device_name,
                      refit_seconds=round(time.time() - t0, 1))
    if stage in ("all", "key-channel") and key_channel_n > 0:
        t0 = time.time()
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")  # the model loads with what is settled
        settings.update(choose_key_channel(out, key_channel_n, device.type, seed + 6))
        record.update(key_channel_n=key_channel_n, key_channel_seconds=round(time.time() - t0, 1))
    settings_path.write_text(json.dumps(settings, indent=2) + "\n")
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(json.dumps(record))


def stage_vae(photos, work, out, cache, steps, batch, lr, mse, max_scale, finetune_steps, finetune_batch, cycle,
              n_latents, device, seed) -> float:
    """Stages 1-2: the VAE at 64 px, then 128 px with the cycle term; its scaling factor makes the
    latents unit-variance, as SD's 0.18215 did. Returns the scaling factor."""
    vae = train_vae(photos, work, steps=steps, batch=batch, size=64, lr=lr, mse=mse, max_scale=max_scale,
                    device=device, seed=seed)
    vae = finetune_vae(vae, photos, steps=finetune_steps, batch=finetune_batch, size=128, lr=2e-4, cycle=cycle,
                       device=device, seed=seed + 4)
    mean = encode_dataset(vae, photos, n=n_latents, size=128, device=device, seed=seed + 1)
    vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    torch.save(mean * vae.config.scaling_factor, cache)
    vae.to("cpu").save_pretrained(out / "vae")
    return vae.config.scaling_factor


def stage_unet(photos, work, out, cache, scheduler, arch, steps, batch, lr, n_latents, device, seed) -> None:
    """Stage 3: the UNet on the VAE's latents of 128 px crops (encoded once, cached in ``cache``)."""
    vae = AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
    if cache.exists():
        latents = torch.load(cache)
    else:
        latents = encode_dataset(vae, photos, n=n_latents, size=128, device=device,
                                 seed=seed + 1) * vae.config.scaling_factor
        torch.save(latents, cache)
    unet = train_unet(latents, work, steps=steps, batch=batch, lr=lr, device=device, seed=seed + 3,
                      scheduler=scheduler, arch=arch)
    unet.to("cpu").save_pretrained(out / "unet")
    scheduler.save_pretrained(out / "scheduler")


def stage_refit(photos, out, cache, steps, batch, samples, device, seed) -> None:
    """Stage 4: the encoder refit on the UNet's samples (``refit_encoder``)."""
    vae = AutoencoderKL.from_pretrained(out / "vae").to(device)
    unet = UNet2DModel.from_pretrained(out / "unet").to(device)
    scheduler = DDIMScheduler.from_pretrained(out / "scheduler")
    vae = refit_encoder(vae, unet, scheduler=scheduler, photos=photos, latents=torch.load(cache), steps=steps,
                        batch=batch, lr=2e-4, n_samples=samples, device=device, seed=seed + 5)
    vae.to("cpu").save_pretrained(out / "vae")


if __name__ == "__main__":
    main()
