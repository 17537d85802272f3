"""Measure the bundled model against the targets of its model card.

    python -m watermark.training.evaluate --out samples/tiny_eval.json [--quick]

1. VAE reconstruction PSNR on 128 px crops of the held-out photo (and of a training photo).
2. Decoder inversion of latents the model generated: NMSE of E(x) and of the forward step
   (Eq. 4) after 10/20/50 iterations; the cocoercivity check of Sec. 3.4 (Fig. 2) with z_300;
   diagnostics of what the image does not show (pixel error and decoder gain along the latent
   error; the decoder's gain for the channel means shifted together).
3. Samples: a 4x4 grid PNG; per-channel latent mean/std against the training latents';
   radially averaged power spectrum of decoded samples against real crops in 3 bands.
4. DDIM round trip z_T -> z_0 -> z_T (50 steps each): NMSE, naive and exact.
Needs the ``train`` extra (scikit-image) for the photos.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from inversion import fixed_point, invert_decoder

from ..bench.report import machine, nmse_db
from ..bench.study import SETTINGS
from ..models import load_model
from ..pipeline import Recovery, noise_from_latents
from .train import HELD_OUT, TRAIN_PHOTOS, load_photo, random_crops


def nmse_ac_db(z_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """nmse_db without the error's per-channel spatial mean (its DC).

    A diagnostic, not a target: on the bundled model most of the inversion error is that mean,
    nearly all of it in two combinations of the channel means that the decoder barely renders
    (``decoder_dc_gain``), so no inversion method can recover it from the image.
    """
    return nmse_db(z_hat - (z_hat - z).mean(dim=(-2, -1), keepdim=True), z)


def tiles(photo: torch.Tensor, size: int = 128) -> torch.Tensor:
    _, h, w = photo.shape
    return torch.stack([photo[:, y : y + size, x : x + size]
                        for y in range(0, h - size + 1, size) for x in range(0, w - size + 1, size)])


def batched(fn, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([fn(x[i : i + batch]) for i in range(0, len(x), batch)])


def psnr(encode, decode, x: torch.Tensor) -> float:
    r = batched(lambda b: decode(encode(b)), x).clamp(-1, 1)
    return float((10 * torch.log10(4 / (r - x).flatten(1).pow(2).mean(1))).mean())


def radial_power_db(images: torch.Tensor, bands=((0.0, 0.125), (0.125, 0.25), (0.25, 0.5))) -> list[float]:
    """Mean power (dB) of the grey-level spectrum in radial bands of the normalised frequency."""
    grey = images.mean(1)
    grey = grey - grey.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(grey, norm="ortho"), dim=(-2, -1)).abs().pow(2).mean(0)
    n = grey.shape[-1]
    f = torch.fft.fftshift(torch.fft.fftfreq(n))
    radius = (f[:, None] ** 2 + f[None, :] ** 2).sqrt()
    return [float(10 * torch.log10(power[(radius >= lo) & (radius < hi)].mean())) for lo, hi in bands]


def cocoercivity(trajectory: list[torch.Tensor], Ex: torch.Tensor, rho: float) -> torch.Tensor:
    """min_k <EDz_inf - EDz_k, z_inf - z_k> / ||EDz_inf - EDz_k||^2 per instance (Sec. 3.4, Fig. 2).

    For the forward step, E(D(z_k)) = E(x) + (z_k - z_{k+1}) / rho, so the trajectory is enough;
    z_inf is its second-to-last point.
    """
    z_inf, ED_inf = trajectory[-2], Ex + (trajectory[-2] - trajectory[-1]) / rho
    ratios = []
    for k in range(len(trajectory) - 2):
        ED_k = Ex + (trajectory[k] - trajectory[k + 1]) / rho
        d_ED, d_z = (ED_inf - ED_k).flatten(1), (z_inf - trajectory[k]).flatten(1)
        ratios.append((d_ED * d_z).sum(1) / d_ED.pow(2).sum(1).clamp_min(1e-30))
    return torch.stack(ratios).min(0).values


def save_grid(images01: torch.Tensor, path: Path, rows: int = 4) -> None:
    n, _, h, w = images01.shape
    cols = math.ceil(n / rows)
    grid = torch.ones(3, rows * h + (rows - 1) * 2, cols * w + (cols - 1) * 2)
    for i, im in enumerate(images01):
        r, c = divmod(i, cols)
        grid[:, r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = im
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def vae_psnr(encode, decode) -> dict:
    """1. VAE reconstruction PSNR on 128 px tiles of the held-out photo and of a training photo."""
    res = {}
    res["psnr_heldout_db"] = psnr(encode, decode, tiles(load_photo(HELD_OUT)))
    res["psnr_train_photo_db"] = psnr(encode, decode, tiles(load_photo("skimage:astronaut")))
    click.echo(f"PSNR held-out {res['psnr_heldout_db']:.2f} dB", err=True)

    return res


def sample_statistics(encode, decode, z_0, gen, grid: Path) -> tuple[dict, torch.Tensor]:
    """3. The samples z_0 against the training latents (per-channel mean, std) and against real
    crops (power spectrum in 3 bands); the 4x4 grid PNG. Returns the figures and the training latents."""
    res: dict = {}
    n_samples = len(z_0)
    photos = [load_photo(name) for name in TRAIN_PHOTOS]
    real = random_crops(photos, n_samples, 128, gen, max_scale=2.0)
    post = batched(encode, real)  # the UNet learns scaled posterior means
    stats = {name: (z.mean(dim=(0, 2, 3)), z.std(dim=(0, 2, 3))) for name, z in (("generated", z_0), ("train", post))}
    res["latent_mean"] = {k: v[0].tolist() for k, v in stats.items()}
    res["latent_std"] = {k: v[1].tolist() for k, v in stats.items()}
    res["latent_std_ratio"] = (stats["generated"][1] / stats["train"][1]).tolist()
    res["latent_mean_diff_in_std"] = ((stats["generated"][0] - stats["train"][0]) / stats["train"][1]).tolist()
    images = batched(decode, z_0).clamp(-1, 1)
    res["spectrum_bands"] = ["0-1/8", "1/8-1/4", "1/4-1/2 cycles/px"]
    res["spectrum_generated_db"] = radial_power_db(images)
    res["spectrum_real_db"] = radial_power_db(real)
    res["spectrum_diff_db"] = [a - b for a, b in zip(res["spectrum_generated_db"], res["spectrum_real_db"])]
    grid.parent.mkdir(parents=True, exist_ok=True)
    save_grid((images[:16] + 1) / 2, grid)
    click.echo(f"latent std ratio {res['latent_std_ratio']}, spectrum diff {res['spectrum_diff_db']}", err=True)

    return res, post


def decoder_inversion_study(encode, decode, z_0, post, n_inv: int, n_iters: int, seed: int, gen) -> dict:
    """2. Decoder inversion of generated latents, x = D(z*): NMSE of the encoder and of the forward
    step, the cocoercivity check, and why the error stalls (what the image does not show)."""
    res: dict = {}
    z_star = z_0[:n_inv]
    x = batched(decode, z_star)
    z_enc = batched(encode, x)
    res["nmse_encoder_db"] = float(nmse_db(z_enc, z_star).mean())
    res["nmse_encoder_without_error_mean_db"] = float(nmse_ac_db(z_enc, z_star).mean())
    rho, checkpoints = 0.5, (10, 20, 50, 100, n_iters)
    k_id = min(50, n_iters)  # where the identifiability diagnostic looks at the forward step
    gen_ident = torch.Generator().manual_seed(seed + 1)  # its own: the figures after it stay as they were
    parts = []
    for i in range(0, n_inv, 10):
        parts.append(forward_step_batch(encode, decode, x[i : i + 10], z_star[i : i + 10], n_iters=n_iters, rho=rho,
                                        checkpoints=checkpoints, k_id=k_id, gen=gen_ident))
        click.echo(f"inversion {i + 10}/{n_inv}", err=True)
    joined = {name: torch.cat([part[name] for part in parts]) for name in parts[0] if not isinstance(parts[0][name], dict)}
    gains, R = channel_gains(decode, z_star[:16], x[:16], gen)
    res["decoder_gain_per_channel"] = gains
    res["decoder_dc_gain"] = dc_gain(R, z_0, post=post, err_dc=joined["error_dc"],
                                     error_dc_share=joined["error_dc_share"], k_id=k_id)
    res["forward_step_rho"] = rho
    for name, field in (("nmse_forward_step_db", "nmse_at"), ("nmse_forward_step_without_error_mean_db", "nmse_ac_at")):
        res[name] = {str(k): float(torch.cat([part[field][k] for part in parts]).mean()) for k in checkpoints
                     if k in parts[0][field]}
    res["forward_step_identifiability"] = {"iterations": k_id, **{k: float(joined[k].mean()) for k in
                                                                  ("pixel_nmse_db", "gain_error", "gain_white")}}
    coco = joined["cocoercivity"]
    res["cocoercivity_min_ratio"] = {"positive": int((coco > 0).sum()), "of": len(coco),
                                     "median": float(coco.median()), "iterations": n_iters}
    return res


def forward_step_batch(encode, decode, x, z_star, *, n_iters: int, rho: float, checkpoints, k_id: int, gen) -> dict:
    """One batch of ``decoder_inversion_study``: the forward step's NMSE at each checkpoint, the
    cocoercivity check, and why the latent error stalls: how much of it the image shows. The pixel
    error of z_k, and the decoder's gain ||D(z* + e) - D(z*)|| / ||e|| along the error e = z_k - z*,
    against white noise of the same norm; a direction the decoder barely renders cannot be
    recovered from the image by any inversion method."""
    traj = []  # z_0 .. z_{n_iters + 1}: the callback sees each iterate before its update
    z_last, _ = fixed_point(encode, decode, x, iters=n_iters + 1, rho=rho, callback=lambda d: traj.append(d["z"].clone()))
    traj.append(z_last)
    out = {"nmse_at": {k: nmse_db(traj[k], z_star) for k in checkpoints if k < len(traj)},
           "nmse_ac_at": {k: nmse_ac_db(traj[k], z_star) for k in checkpoints if k < len(traj)},
           "cocoercivity": cocoercivity(traj, batched(encode, x), rho)}
    z_k = traj[k_id]
    e = z_k - z_star
    w = torch.randn(e.shape, generator=gen)
    w = w * (e.flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1)).view(-1, 1, 1, 1)
    x_k = decode(z_k)  # = D(z* + e)
    out["pixel_nmse_db"] = nmse_db(x_k, x)
    out["gain_error"] = (x_k - x).flatten(1).norm(dim=1) / e.flatten(1).norm(dim=1)
    out["gain_white"] = (decode(z_star + w) - x).flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1)
    e_dc = e.mean(dim=(-2, -1))  # the error's per-channel spatial mean, and its share of the error
    out["error_dc"] = e_dc
    out["error_dc_share"] = e_dc.pow(2).sum(1) * e[0, 0].numel() / e.flatten(1).pow(2).sum(1)
    return out


def channel_gains(decode, z16, x16, gen) -> tuple[dict, torch.Tensor]:
    """The decoder's response to shifting one channel's mean by 0.3: R[:, c] is the pixel change
    per unit shift of channel c's mean; its gain (pixel RMS change per unit) one channel at a time,
    against white noise of std 0.3."""
    R = torch.stack([((batched(decode, z16 + 0.3 * torch.eye(z16.shape[1])[c].view(1, -1, 1, 1)) - x16) / 0.3)
                     .flatten(1) for c in range(z16.shape[1])], 1)
    gains = {"channel_mean_shift": R.pow(2).mean(dim=(0, 2)).sqrt().tolist(), "white_noise": []}
    for c in range(z16.shape[1]):
        z_pert = z16.clone()
        z_pert[:, c] += 0.3 * torch.randn(z16[:, c].shape, generator=gen)
        gains["white_noise"].append(float((batched(decode, z_pert) - x16).pow(2).mean().sqrt() / 0.3))
    return gains, R


def dc_gain(R, z_0, post, err_dc, error_dc_share, k_id: int) -> dict:
    """The channel means shifted together: G = R R^T / P. Its eigenvalues, as RMS gains, say which
    combinations of the means the image shows; the spread of the generated and the training
    latents' means along its eigenvectors, and where the inversion error's mean lies, say why that
    error stalls. (One channel at a time hides a combination the decoder ignores.)"""
    eig, vec = torch.linalg.eigh((R @ R.transpose(1, 2)).mean(0) / R.shape[-1])  # ascending
    return {
        "gains": eig.clamp_min(0).sqrt().tolist(),
        "directions": vec.T.tolist(),
        "generated_mean_std_along": (z_0.mean(dim=(-2, -1)) @ vec).std(0).tolist(),
        "train_mean_std_along": (post.mean(dim=(-2, -1)) @ vec).std(0).tolist(),
        "iterations": k_id,
        "error_share_in_channel_means": float(error_dc_share.mean()),
        "error_mean_share_along": ((err_dc @ vec).pow(2) / err_dc.pow(2).sum(1, keepdim=True)).mean(0).tolist(),
    }


# The model card's comparison runs the iterative methods of the decision study at its step sizes.
COMPARED = {method: kwargs for method, kwargs in SETTINGS.items() if method != "encoder"}


def method_comparison(encode, decode, z_star: torch.Tensor, iters=(10, 20, 50), batch: int = 10) -> dict:
    """NMSE (dB) of z after each method at each iteration count, from E(x), x = D(z*), with the
    seconds per latent; each count is its own run (Adam's schedules depend on the total)."""
    x = batched(decode, z_star)
    out = {"encoder": {"0": float(nmse_db(batched(encode, x), z_star).mean())}}
    seconds: dict = {}
    for method, kwargs in COMPARED.items():
        out[method], seconds[method] = {}, {}
        for k in iters:
            t0 = time.perf_counter()
            z = torch.cat([invert_decoder(method, encode, decode, x[i : i + batch], iters=k, **kwargs)[0]
                           for i in range(0, len(x), batch)])
            seconds[method][str(k)] = (time.perf_counter() - t0) / len(x)
            out[method][str(k)] = float(nmse_db(z, z_star).mean())
        click.echo(f"{method}: {out[method]}", err=True)
    return {"nmse_by_method_db": out, "seconds_per_latent_by_method": seconds, "compared_settings": COMPARED,
            "n_compared": len(z_star)}


def ddim_round_trip(invert, z_T, z_0) -> dict:
    """4. DDIM round trip z_T -> z_0 -> z_T, 50 steps each way: NMSE, naive and exact."""
    res: dict = {}
    res["ddim_roundtrip_nmse_db"] = {
        "naive": float(nmse_db(batched(lambda b: invert(b, Recovery(ddim_steps=50)), z_0),
                               z_T).mean()),
        "exact": float(nmse_db(batched(lambda b: invert(b, Recovery(ddim_steps=50, exact=True), 5), z_0), z_T).mean()),
        # the last trailing step (t = 19 -> alpha_bar_0) contracts slowly: 15 refinements per step
        "exact_15": float(nmse_db(batched(lambda b: invert(b, Recovery(ddim_steps=50, exact=True), 15), z_0),
                                  z_T).mean()),
    }
    return res


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default="samples/tiny_eval.json",
              show_default=True)
@click.option("--grid", type=click.Path(dir_okay=False, path_type=Path), default="samples/tiny_samples.png",
              show_default=True)
@click.option("--quick", is_flag=True, help="Few samples and iterations: checks the script, not the model.")
@click.option("--n-inv", default=100, show_default=True, help="Generated latents for decoder inversion.")
@click.option("--coco-iters", default=100, show_default=True, help="k of z_inf = z_k in the cocoercivity check.")
@click.option("--seed", default=20241127, show_default=True)
@click.option("--model", "model_name", default="tiny", show_default=True, help="Model name or folder.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@torch.no_grad()  # restores the caller's grad mode; the gradient method turns it on for itself
def main(out, grid, quick, n_inv, coco_iters, seed, model_name, device):
    """Measure the bundled tiny model (PSNR, decoder inversion, sample statistics, DDIM round trip)."""
    t_start = time.time()
    model = load_model(model_name, device)
    dev = model.device

    # every tensor below lives on the CPU; the networks run on ``device``
    def encode(x):
        return model.encode(x.to(dev)).float().cpu()

    def decode(z):
        return model.decode(z.to(dev)).float().cpu()

    def sample(z_T):
        return model.sample(z_T.to(dev), 50).float().cpu()

    def invert(z_0, recovery, refine_iters=3):
        return noise_from_latents(model, z_0.to(dev), recovery, refine_iters)

    n_samples, n_iters, n_rt = (16, 20, 4) if quick else (256, coco_iters, 32)
    n_inv = 8 if quick else n_inv
    gen = torch.Generator().manual_seed(seed)
    res: dict = {"command": "python -m watermark.training.evaluate " + " ".join(sys.argv[1:]),
                 "machine": machine(device),
                 "torch": torch.__version__}

    res.update(vae_psnr(encode, decode))
    z_T = torch.randn(n_samples, 4, 32, 32, generator=gen)
    z_0 = batched(sample, z_T, 32)
    stats, post = sample_statistics(encode, decode, z_0, gen, grid)
    res.update(stats)
    res.update(decoder_inversion_study(encode, decode, z_0=z_0, post=post, n_inv=n_inv, n_iters=n_iters, seed=seed, gen=gen))
    res.update(method_comparison(encode, decode, z_0[:n_inv], (2, 4) if quick else (10, 20, 50)))
    res.update(ddim_round_trip(invert, z_T[:n_rt], z_0[:n_rt]))
    res["seconds"] = round(time.time() - t_start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    click.echo(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
