"""The Python API: keygen, embed and verify, the operations the CLI exposes.

    from watermark import api
    key = api.keygen("key.json")
    api.embed(key, "out/", n=4)
    results = api.verify(["out/"], [key])
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from .embed import initial_noise
from .generate import decode_images, sample_latents
from .images import ImageError, find_images, load_image, save_png
from .keys import Key, KeyFileError, load_key, new_key, save_key
from .model import LatentDiffusion, ModelError, load_model
from .verify import Recovery, match_keys, recover_noise


class OutputError(Exception):
    """An output would overwrite something the user owns (one-line message)."""


_MODELS: dict[tuple, LatentDiffusion] = {}


def get_model(name: str, device: str = "cpu", dtype: str = "float32") -> LatentDiffusion:
    """Load once per process."""
    if (name, device, dtype) not in _MODELS:
        _MODELS[(name, device, dtype)] = load_model(name, device, dtype)
    return _MODELS[(name, device, dtype)]


def keygen(output: str | os.PathLike | None, model: str = "tiny", size: int | None = None, pattern: str = "ring",
           radius: int | None = None, channel: int | None = None, seed: int | None = None,
           force: bool = False) -> Key:
    """A new key for ``model`` at ``size`` px (default: the model's), saved to ``output`` if given."""
    m = get_model(model)
    channel = m.default_key_channel if channel is None else channel
    key = new_key(model, m.latent_shape(size or m.default_size), pattern, radius, channel, seed)
    if output is not None:
        save_key(key, output, force=force)
    return key


def _as_key(key: Key | str | os.PathLike) -> Key:
    return key if isinstance(key, Key) else load_key(key)


def check_key_fits(key: Key, model: LatentDiffusion) -> None:
    size = key.latent_shape[1] * model.downsample
    if key.latent_shape[1] != key.latent_shape[2]:
        raise KeyFileError(f"key {key.key_id}: latent shape {key.latent_shape} is not square")
    try:
        expected = model.latent_shape(size)
    except ModelError:
        expected = None
    if expected != tuple(key.latent_shape):
        raise KeyFileError(f"key {key.key_id}: latent shape {list(key.latent_shape)} does not fit model "
                           f"{key.model!r} (latent channels {model.latent_channels}, sizes multiple of "
                           f"{model.size_multiple // model.downsample})")


@dataclass
class Generated:
    file: str
    seed: int
    prompt: str
    key_id: str | None
    model: str
    watermarked: bool
    steps: int
    guidance: float


def embed(key: Key | str, outdir: str | os.PathLike, n: int = 4, prompts: list[str] | None = None, seed: int = 0,
          steps: int = 50, guidance: float | None = None, watermark: bool = True, force: bool = False,
          device: str = "cpu", dtype: str = "float32", batch: int = 8,
          progress: Callable[[int], None] | None = None) -> list[Generated]:
    """Generate ``n`` images from z_T carrying ``key`` (or clean controls), seeds seed..seed+n-1.

    Writes PNGs and ``manifest.jsonl`` into ``outdir``; existing files there are kept unless ``force``.
    """
    key = _as_key(key)
    model = get_model(key.model, device, dtype)
    check_key_fits(key, model)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    prompts = list(prompts or [""])
    if any(prompts) and not model.conditional:
        raise ModelError(f"model {key.model!r} is unconditional: it takes no prompt")
    guidance = (7.5 if model.conditional else 1.0) if guidance is None else guidance
    outdir = Path(outdir)
    names = [f"{i:05d}.png" for i in range(n)]
    targets = [outdir / name for name in names] + [outdir / "manifest.jsonl"]
    clash = [str(t) for t in targets if t.exists()]
    if clash and not force:
        raise OutputError(f"{clash[0]}: exists; use --force to overwrite"
                          + (f" ({len(clash)} files)" if len(clash) > 1 else ""))
    outdir.mkdir(parents=True, exist_ok=True)
    size = key.latent_shape[1] * model.downsample
    records = []
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        seeds = [seed + i for i in idx]
        batch_prompts = [prompts[i % len(prompts)] for i in idx]
        z_T = initial_noise(key, seeds, watermark)
        images = generate(model, z_T, batch_prompts, steps, guidance, size)
        for i, s, p, im in zip(idx, seeds, batch_prompts, images):
            save_png(im, outdir / names[i])
            records.append(Generated(names[i], s, p, key.key_id if watermark else None, key.model, watermark,
                                     steps, guidance))
        if progress is not None:
            progress(len(idx))
    with open(outdir / "manifest.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    return records


def generate(model: LatentDiffusion, z_T: torch.Tensor, prompts: list[str], steps: int, guidance: float,
             size: int) -> torch.Tensor:
    """Images in [0, 1] from z_T: our DDIM loop for unconditional models; for text-conditioned
    (Stable Diffusion family) models, the diffusers pipeline with ``latents=z_T``."""
    if not model.conditional:
        return decode_images(model, sample_latents(model, z_T, steps)).cpu()
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(prompt=prompts, latents=z_T.to(model.device, model.dtype), num_inference_steps=steps,
               guidance_scale=guidance, height=size, width=size, output_type="pt")
    return out.images.float().cpu()


@dataclass
class Result:
    path: str
    watermarked: bool | None
    p_value: float | None
    key_id: str | None
    distance: float | None
    error: str | None
    note: str | None
    inversion: str
    iterations: int | None
    ddim_steps: int
    exact: bool
    keys_tested: int
    seconds: float | None


def verify(paths: list[str], keys: list[Key | str], recovery: Recovery = Recovery(), alpha: float = 0.01,
           device: str = "cpu", dtype: str = "float32", batch: int = 8,
           progress: Callable[[int], None] | None = None) -> list[Result]:
    """Test every image under ``paths`` against ``keys``; one Result per image, in order.

    An image that cannot be read gets a Result with ``error`` set; the others go on.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    keys = [_as_key(k) for k in keys]
    if not keys:
        raise ValueError("at least one key is needed")
    if len({(k.model, k.latent_shape) for k in keys}) > 1:
        raise KeyFileError("all keys must be for the same model and latent shape; verify them in separate runs")
    model = get_model(keys[0].model, device, dtype)
    for k in keys:
        check_key_fits(k, model)
    size = keys[0].latent_shape[1] * model.downsample

    def empty(path, error, note=None):
        return Result(path, None, None, None, None, error, note, recovery.method, None, recovery.ddim_steps,
                      recovery.exact, len(keys), None)

    results: list[Result | None] = []
    pending: list[tuple[int, str, torch.Tensor, str | None]] = []

    def flush():
        if not pending:
            return
        t0 = time.perf_counter()
        x = torch.stack([p[2] for p in pending])
        z_T, record = recover_noise(model, x, recovery)
        tests = match_keys(z_T, keys)
        per_image = (time.perf_counter() - t0) / len(pending)
        for (i, path, _, note), t, it in zip(pending, tests, record.iterations.tolist()):
            results[i] = Result(path, t.p_value <= alpha, t.p_value, t.key_id, t.distance, None, note,
                                recovery.method, int(it), recovery.ddim_steps, recovery.exact, len(keys),
                                round(per_image, 4))
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for path, error in find_images(list(paths)):
        results.append(None)
        if error is not None:
            results[-1] = empty(path, error)
            if progress is not None:
                progress(1)
            continue
        try:
            x, note = load_image(path, size)
        except ImageError as e:
            results[-1] = empty(path, str(e))
            if progress is not None:
                progress(1)
            continue
        pending.append((len(results) - 1, path, x, note))
        if len(pending) == batch:
            flush()
    flush()
    return results  # type: ignore[return-value]
