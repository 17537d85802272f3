"""Train the bundled ``tiny-video``: a ModelScope-style text-to-video model (diffusers'
``TextToVideoSDPipeline``) made of ``tiny``'s trained VAE, applied frame by frame as LaVie and
ModelScope apply Stable Diffusion's, and a small spatio-temporal UNet (``UNet3DConditionModel``)
trained here on clips of synthetic camera moves over the training photographs.

    python -m watermark.training.train_video --work .train-video --out watermark/models/tiny-video --minutes 45

The text encoder is a random two-layer CLIP that the UNet only ever saw reading the empty prompt:
the model is unconditional in all but its interface (the pipeline needs one). Seeds are fixed;
training stops after ``--steps`` or ``--minutes``, whichever comes first, checkpoints to ``--work``
and resumes from there. The model card (``README.md`` in the output) says what it is and is not.
"""

from __future__ import annotations

import json
import math
import platform
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, TextToVideoSDPipeline, UNet3DConditionModel
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel

from ..models import TINY_PATH
from .tokenizer import save_tokenizer
from .train import TRAIN_PHOTOS, Checkpoint, _log, denoiser_step, load_photo

SIZE, FRAMES = 64, 8  # 64-px frames (16 x 16 latents), 8 frames a clip
MAX_PAN = 0.06  # camera speed: up to this share of the crop's side per frame
MAX_ZOOM = 0.03  # zoom: up to 3 % in or out per frame
STATIC = 0.1  # the share of clips with a still camera


def make_unet() -> UNet3DConditionModel:
    return UNet3DConditionModel(sample_size=SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(32, 64, 64),
                                layers_per_block=1, norm_num_groups=16, cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D", "DownBlock3D"),
                                up_block_types=("UpBlock3D", "CrossAttnUpBlock3D", "CrossAttnUpBlock3D"))


def make_text_encoder(seed: int, vocab: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                        num_hidden_layers=2, vocab_size=vocab, max_position_embeddings=16,
                                        bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32)).eval()


def camera_clip(photo: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One clip (FRAMES, 3, SIZE, SIZE) of a camera panning and zooming over ``photo`` (3, H, W):
    square windows of side SIZE * s (s log-uniform in [1, 2]) whose centre moves at a constant
    speed and whose side changes by a constant factor per frame, resampled bilinearly."""
    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    _, h, w = photo.shape
    side = SIZE * math.exp(u(0, math.log(min(2.0, min(h, w) / SIZE / 1.2))))
    still = u(0, 1) < STATIC
    angle = u(0, 2 * math.pi)
    speed = 0.0 if still else u(0, MAX_PAN) * side
    zoom = 1.0 if still else math.exp(u(-MAX_ZOOM, MAX_ZOOM))
    sides = [side * zoom**f for f in range(FRAMES)]
    travel = [(speed * f * math.cos(angle), speed * f * math.sin(angle)) for f in range(FRAMES)]
    # centre range that keeps every window inside the photo
    lo_x = max(s / 2 - dx for s, (dx, _) in zip(sides, travel))
    hi_x = min(w - s / 2 - dx for s, (dx, _) in zip(sides, travel))
    lo_y = max(s / 2 - dy for s, (_, dy) in zip(sides, travel))
    hi_y = min(h - s / 2 - dy for s, (_, dy) in zip(sides, travel))
    if hi_x < lo_x or hi_y < lo_y:  # the move leaves the photo: hold the camera still
        travel, sides = [(0.0, 0.0)] * FRAMES, [side] * FRAMES
        lo_x, hi_x, lo_y, hi_y = side / 2, w - side / 2, side / 2, h - side / 2
    cx, cy = u(lo_x, hi_x), u(lo_y, hi_y)
    theta = torch.zeros(FRAMES, 2, 3)
    for f, (s, (dx, dy)) in enumerate(zip(sides, travel)):  # affine_grid's normalised coordinates
        theta[f, 0, 0], theta[f, 1, 1] = s / w, s / h
        theta[f, 0, 2], theta[f, 1, 2] = 2 * (cx + dx) / w - 1, 2 * (cy + dy) / h - 1
    grid = F.affine_grid(theta, [FRAMES, 3, SIZE, SIZE], align_corners=False)
    clip = F.grid_sample(photo.expand(FRAMES, -1, -1, -1), grid, mode="bilinear", align_corners=False)
    if u(0, 1) < 0.5:
        clip = clip.flip(-1)
    return clip.clamp(-1, 1)


@torch.no_grad()
def encode_clips(vae: AutoencoderKL, photos: list[torch.Tensor], n: int, seed: int) -> torch.Tensor:
    """Scaled posterior means (n, 4, FRAMES, SIZE/4, SIZE/4) of n camera clips: what the UNet learns."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        clip = camera_clip(photos[int(torch.randint(len(photos), (1,), generator=gen))], gen)
        z = vae.encode(clip).latent_dist.mean * vae.config.scaling_factor  # (F, C, h, w)
        out.append(z.transpose(0, 1))
        if (i + 1) % 500 == 0:
            click.echo(f"[data] {i + 1}/{n} clips", err=True)
    return torch.stack(out)


def train_unet(latents, cond, scheduler, work: Path, steps: int, minutes: float, batch: int, lr: float,
               seed: int) -> tuple[UNet3DConditionModel, int, float]:
    """v-prediction MSE on the zero-terminal-SNR schedule (tiny's), AdamW, cosine lr, EMA; stops at
    ``steps`` or after ``minutes`` of this sitting. Returns the EMA UNet, steps done, seconds."""
    torch.manual_seed(seed)
    unet = make_unet()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=steps // 50, num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=0.999, use_ema_warmup=True, power=2 / 3)
    gen = torch.Generator().manual_seed(seed)
    ckpt, start, spent = Checkpoint(work / "unet3d.pt"), 0, 0.0
    if state := ckpt.load():
        unet.load_state_dict(state["model"]), opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"]), ema.load_state_dict(state["ema"])
        gen.set_state(state["gen"])
        start, spent = state["step"], state["seconds"]
    t0, step = time.time(), start
    cond = cond.expand(batch, -1, -1)

    def save():
        ckpt.save(dict(model=unet.state_dict(), opt=opt.state_dict(), sched=sched.state_dict(), ema=ema.state_dict(),
                       gen=gen.get_state(), step=step, seconds=spent + time.time() - t0))

    while step < steps and time.time() - t0 < minutes * 60:
        z0 = latents[torch.randint(len(latents), (batch,), generator=gen)]
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        target = scheduler.get_velocity(z0, noise, t)
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, target)
        denoiser_step(unet, loss, opt, sched, ema)
        step += 1
        if step % 50 == 0:
            _log("unet3d", step, steps, loss.item(), t0)
        if step % 200 == 0:
            save()
    save()
    ema.copy_to(unet.parameters())
    return unet.eval(), step, spent + time.time() - t0


@click.command()
@click.option("--work", type=click.Path(path_type=Path), default=Path(".train-video"), show_default=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--clips", default=4000, show_default=True, help="Training clips (encoded once, cached in --work).")
@click.option("--steps", default=3000, show_default=True, help="The cosine schedule's length.")
@click.option("--minutes", default=45.0, show_default=True, help="Stop this sitting after so many minutes.")
@click.option("--batch", default=8, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seed", default=20261204, show_default=True)
def main(work: Path, out: Path, clips: int, steps: int, minutes: float, batch: int, lr: float, seed: int) -> None:
    from transformers import CLIPTokenizer

    work.mkdir(parents=True, exist_ok=True)
    vae = AutoencoderKL.from_pretrained(TINY_PATH / "vae").eval().requires_grad_(False)
    scheduler = DDIMScheduler.from_pretrained(TINY_PATH / "scheduler")
    cache = work / "latents.pt"
    if not cache.exists():
        photos = [load_photo(name) for name in TRAIN_PHOTOS]
        torch.save(encode_clips(vae, photos, clips, seed), cache)
    latents = torch.load(cache)
    tokenizer_dir = work / "tokenizer"
    if not tokenizer_dir.exists():
        save_tokenizer(tokenizer_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir)
    text_encoder = make_text_encoder(seed, len(tokenizer))
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=make_unet(),
                                 scheduler=scheduler)
    with torch.no_grad():
        cond = pipe.encode_prompt([""], torch.device("cpu"), 1, False)[0]  # what inversion conditions on
    unet, done, seconds = train_unet(latents, cond, scheduler, work, steps, minutes, batch, lr, seed)
    pipe = TextToVideoSDPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    pipe.save_pretrained(out)
    record = {"seed": seed, "clips": clips, "frames": FRAMES, "size": SIZE, "max_pan": MAX_PAN, "max_zoom": MAX_ZOOM,
              "static": STATIC, "steps_planned": steps, "steps_done": done, "batch": batch, "lr": lr,
              "seconds": round(seconds, 1), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "machine": platform.machine(), "vae": "tiny's (watermark/models/tiny/vae), frozen",
              "train_photos": list(TRAIN_PHOTOS), "command": "python -m watermark.training.train_video "
              f"--out {out} --clips {clips} --steps {steps} --minutes {minutes} --batch {batch} --lr {lr}"}
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    click.echo(f"saved {out} after {done} steps ({seconds / 60:.1f} min)", err=True)


if __name__ == "__main__":
    main()
