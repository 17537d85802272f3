"""Train the bundled ``tiny`` latent diffusion model: the VAE, then the UNet.

    python -m watermark.train --work .train --out watermark/models/tiny

Data: the colour photographs shipped in scikit-image (``pip install .[train]``), as
random crops with scale and flip augmentation; one photo (``HELD_OUT``) never enters
training and is used only to evaluate. Seeds are fixed; every stage checkpoints to
``--work`` and resumes from there, so training may run in several sittings.
The defaults reproduce the shipped model: about 5 minutes on an H100, about 3 hours on 2 CPU
cores (the UNet at batch 256 is the long part); a GPU is used when present. Within 90 CPU
minutes: ``--unet-steps 3000 --unet-batch 32 --n-latents 4096 --unet-attention-levels 1``
(the previous bundled UNet; its figures are in the model card).
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
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

TRAIN_PHOTOS = (
    "astronaut",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
)
HELD_OUT = "coffee"


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
    """Unconditional eps-prediction UNet; self-attention only in the lowest attention_levels."""
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


def make_scheduler() -> DDIMScheduler:
    """Stable Diffusion's noise schedule: 1000 steps, scaled-linear betas, no clipping."""
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def load_photo(name: str) -> torch.Tensor:
    """One scikit-image photo as a (3, H, W) float tensor in [-1, 1]."""
    import skimage.data

    image = getattr(skimage.data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle returns (left, right, disparity)
        image = image[0]
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


def train_vae(photos, work: Path, steps: int, batch: int, size: int, lr: float, mse: float, max_scale: float,
              device, seed: int) -> AutoencoderKL:
    """Stage 1: L1 (+ mse * MSE) reconstruction of a posterior sample, + 1e-6 KL; AdamW,
    cosine learning rate with warm-up. The KL weight is relative to the reconstruction loss
    summed over pixels, as in LDM/SD (1e-6 against the *mean* L1 would be ~10^4 times stronger).
    """
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
        posterior = vae.encode(x).latent_dist
        noise = torch.randn(posterior.mean.shape, generator=gen).to(device)
        recon = vae.decode(posterior.mean + posterior.std * noise).sample
        n_pix = x[0].numel()
        loss = (recon - x).abs().mean() + mse * (recon - x).pow(2).mean() + 1e-6 * posterior.kl().mean() / n_pix
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("vae", step + 1, steps, loss.item(), t0)
            ckpt.save(dict(model=vae.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                           gen=gen.get_state(), step=step + 1))
    return vae.eval()


def finetune_vae(vae: AutoencoderKL, photos, steps: int, batch: int, size: int, lr: float, device,
                 seed: int) -> AutoencoderKL:
    """Stage 2: L1 on the decoded posterior *mean*, at the working resolution, constant lr.

    Stage 1 alone leaves a decoder that ignores some latent directions at 128 px (it learned
    on 64 px crops, with latent noise): E(D(z)) was -13 dB from z and the forward step of
    decoder inversion could not recover generated latents. A short deterministic pass at
    128 px makes E a near left-inverse of D there (measured: -20 dB, forward step -28 dB
    in 10 iterations). Training at 128 px from the start (same CPU budget) did not: -14 dB.
    """
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        x = random_crops(photos, batch, size, gen, max_scale=2.0).to(device)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        loss = (recon - x).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            _log("vae-finetune", step + 1, steps, loss.item(), t0)
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


def train_unet(latents, work: Path, steps: int, batch: int, lr: float, device, seed: int,
               arch: dict | None = None) -> UNet2DModel:
    """eps-prediction MSE on SD's schedule; AdamW, cosine lr, EMA of the weights."""
    torch.manual_seed(seed)
    unet = make_unet(**(arch or {})).to(device)
    scheduler = make_scheduler()
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
        t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        loss = F.mse_loss(unet(zt.to(device), t.to(device)).sample, noise.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.step(unet.parameters())
        if (step + 1) % 100 == 0 or step + 1 == steps:
            _log("unet", step + 1, steps, loss.item(), t0)
        if (step + 1) % 1000 == 0 or step + 1 == steps:
            ckpt.save(dict(model=unet.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(),
                           ema=ema.state_dict(), gen=gen.get_state(), step=step + 1))
    ema.copy_to(unet.parameters())
    return unet.eval()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=".train", show_default=True,
              help="Checkpoints (resume from here).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default="watermark/models/tiny",
              show_default=True, help="Where the trained model is saved (diffusers layout).")
@click.option("--stage", type=click.Choice(["all", "vae", "unet"]), default="all", show_default=True,
              help="'unet' trains on the VAE already saved in --out.")
@click.option("--vae-steps", default=4000, show_default=True)
@click.option("--unet-steps", default=2000, show_default=True)
@click.option("--vae-batch", default=16, show_default=True)
@click.option("--vae-finetune-steps", default=150, show_default=True, help="Stage 2, at 128 px.")
@click.option("--unet-batch", default=256, show_default=True)
@click.option("--vae-lr", default=5e-4, show_default=True)
@click.option("--unet-lr", default=5e-4, show_default=True)
@click.option("--vae-mse", default=0.0, show_default=True, help="Weight of the MSE term beside L1.")
@click.option("--vae-max-scale", default=2.0, show_default=True, help="Largest crop, in units of the crop size.")
@click.option("--unet-channels", default="32,64,128", show_default=True, help="UNet block widths.")
@click.option("--unet-layers", default=1, show_default=True, help="UNet layers per block.")
@click.option("--unet-attention-levels", default=2, show_default=True, help="Lowest levels with self-attention.")
@click.option("--n-latents", default=32768, show_default=True, help="Training crops encoded for the UNet.")
@click.option("--seed", default=20241127, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def main(work, out, stage, vae_steps, unet_steps, vae_batch, vae_finetune_steps, unet_batch, vae_lr, unet_lr, vae_mse, vae_max_scale,
         unet_channels, unet_layers, unet_attention_levels, n_latents, seed, device):
    """Train the VAE (64 px crops, then a short deterministic pass at 128 px), fix its scaling
    factor, then train the UNet on 128 px crops."""
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          ("cpu" if device == "auto" else device))
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    photos = [load_photo(name).to(device) for name in TRAIN_PHOTOS]
    record_path = out / "training.json"
    record = json.loads(record_path.read_text()) if stage == "unet" and record_path.exists() else {}
    record.update(seed=seed, device=str(device), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                  device_name=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  train_photos=list(TRAIN_PHOTOS), held_out=HELD_OUT)
    if stage in ("all", "vae"):
        t0 = time.time()
        vae = train_vae(photos, work, vae_steps, vae_batch, 64, vae_lr, vae_mse, vae_max_scale, device, seed)
        vae = finetune_vae(vae, photos, vae_finetune_steps, 4, 128, 2e-4, device, seed + 4)
        # 1. The scaling factor makes the latents unit-variance, as SD's 0.18215 did.
        mean = encode_dataset(vae, photos, n_latents, 128, device, seed + 1)
        vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
        vae.to("cpu").save_pretrained(out / "vae")
        record.update(vae_steps=vae_steps, vae_batch=vae_batch, vae_finetune_steps=vae_finetune_steps, vae_lr=vae_lr, vae_mse=vae_mse,
                      vae_max_scale=vae_max_scale, scaling_factor=vae.config.scaling_factor,
                      vae_seconds=round(time.time() - t0, 1))
    if stage in ("all", "unet"):
        t0 = time.time()
        vae = AutoencoderKL.from_pretrained(out / "vae").to(device).eval()
        cache = work / f"latents_{n_latents}.pt"  # the encoded crops, shared by resumed or parallel runs
        if cache.exists():
            latents = torch.load(cache)
        else:
            latents = encode_dataset(vae, photos, n_latents, 128, device, seed + 1) * vae.config.scaling_factor
            torch.save(latents, cache)
        arch = dict(channels=tuple(int(c) for c in unet_channels.split(",")), layers=unet_layers,
                    attention_levels=unet_attention_levels)
        unet = train_unet(latents, work, unet_steps, unet_batch, unet_lr, device, seed + 3, arch)
        unet.to("cpu").save_pretrained(out / "unet")
        settings_path = out / "ringmark.json"  # where the model's loader finds it (model.noise_mean)
        settings = json.loads(settings_path.read_text()) if settings_path.exists() else {}
        settings["latent_mean"] = [round(float(m), 4) for m in latents.mean(dim=(0, 2, 3))]
        settings_path.write_text(json.dumps(settings, indent=2) + "\n")
        make_scheduler().save_pretrained(out / "scheduler")
        record.update(unet_steps=unet_steps, unet_batch=unet_batch, unet_lr=unet_lr, n_latents=n_latents,
                      unet_channels=unet_channels, unet_layers=unet_layers,
                      unet_attention_levels=unet_attention_levels, unet_device=str(device),
                      unet_seconds=round(time.time() - t0, 1))
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    click.echo(json.dumps(record))


if __name__ == "__main__":
    main()
