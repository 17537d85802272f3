"""``ringmark calibrate``: the null model of one model, recovery and size (``scheme.null``), from
clean images the model generates (or the user's own clean images), written as it goes so that a
stopped run resumes where it stopped.

    paths = calibrate("tiny-sd", n=1024)   # -> [watermark/models/tiny-sd/null/null-encoder-ddim10-4x32x32.npz]
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from .adaptive import EDITED, clipped_share
from .io.images import ImageError, find_images, load_image, to_pil, to_tensor
from .io.nullfile import FOLDER, NullFileError, load_null, null_name, recovery_fields, save_null
from .models import NAMED, get_model
from .pipeline import Recovery, check_size, run_look
from .scheme.calibrated import with_scales
from .scheme.geometry import DEFAULT_SEARCH, search_grid
from .scheme.keys import PATTERNS, new_key
from .scheme.null import NullModel

DEFAULT_IMAGES = 1024  # the spread of t along a key to about 2 % (its variance from n samples: sd sqrt(2 / n))
SEED = 10**9  # the first seed of the clean images (far from embed's default seeds 0, 1, ...)


def default_folder(model: str) -> Path:
    """The model's own folder (``null/``) for a bundled model or a local folder, where ``verify``
    finds them; a hub id needs an explicit output."""
    source = Path(NAMED.get(model, model))
    if not source.is_dir():
        raise NullFileError(f"model {model!r} is not a local folder: give the output folder (-o), e.g. the keys' folder")
    return source / FOLDER


def outputs(output: str | os.PathLike | None, model: str, looks: dict, shape: tuple[int, int, int]) -> dict[str, Path]:
    """The file of each look's null model: in the folder ``output`` (default: the model's) under the
    name verify looks for (``io.nullfile.null_name``); ``output`` may name the file of a one-look recovery."""
    if output is not None and not Path(output).is_dir() and Path(output).suffix == ".npz":
        if len(looks) > 1:
            raise NullFileError(f"{output}: this recovery takes {len(looks)} looks ({', '.join(looks)}), each with a "
                                "null model of its own: give a folder")
        return {"first": Path(output)}
    folder = Path(output) if output is not None else default_folder(model)
    return {role: folder / null_name(look, shape) for role, look in looks.items()}


def calibrate(model: str = "tiny", output: str | os.PathLike | None = None, n: int = DEFAULT_IMAGES,
              size: int | None = None, recovery: Recovery = Recovery(), steps: int = 50, seed: int = SEED,
              images: str | os.PathLike | None = None, batch: int = 16, force: bool = False, device: str = "cpu",
              dtype: str = "float32", progress: Callable[[int, int], None] | None = None) -> list[Path]:
    """Make the null model of each look of ``recovery`` (``Recovery.looks``) for ``model`` at
    ``size`` px from ``n`` clean images: generated from seeds seed, seed + 1, ... with ``steps``
    DDIM steps and stored as 8-bit pixels (as a PNG holds them), or the first ``n`` of the images
    under ``images`` (sorted; unreadable files skipped). The edited-image look's is made from the
    same images under a clipping edit each (``clipping_edit``), as that look only sees edited
    images. Returns the files written (``outputs``).

    The sums and samples so far are kept in ``<file>.partial`` after every batch; a rerun with the
    same settings continues from there. An existing file is replaced only with ``force``.
    ``progress(done, n)`` after each batch.
    """
    check_size(size)
    for name, value, least in (("n", n, 2), ("steps", steps, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    m = get_model(model, device, dtype)
    size = m.default_size if size is None else size
    shape = m.latent_shape(size)
    looks = recovery.for_model(m.default_recovery).looks()
    paths = outputs(output, model, looks, shape)
    for path in paths.values():
        if path.exists() and not force:
            raise NullFileError(f"{path}: exists; use --force to make it again")
        path.parent.mkdir(parents=True, exist_ok=True)
    partial = {role: path.with_name(path.name + ".partial") for role, path in paths.items()}
    source = ({"images": str(Path(images).resolve())} if images is not None
              else {"generated": {"seed": seed, "steps": steps}})
    files = _clean_files(images) if images is not None else None
    nulls = {role: NullModel(shape, meta={"model": model, "recovery": recovery_fields(look), "size": size,
                                          "target": n, **source}) for role, look in looks.items()}
    if not force and any(p.exists() for p in partial.values()):
        nulls = _resume(nulls, partial)
    while (done := nulls["first"].n) < n:
        count = min(batch, n - done)
        if files is None:
            z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
                             for i in range(done, done + count)])
            x = (m.generate(z, steps).float().cpu() * 255).round() / 127.5 - 1  # 8-bit, as verify reads a PNG
        else:
            if done >= len(files):
                raise NullFileError(f"{images}: {len(files)} usable images, {n} asked for")
            x = torch.stack([load_image(f, size).image for f in files[done : done + count]])
        for role, z_T in _looks(m, x, looks, seeds=range(seed + done, seed + done + count)).items():
            nulls[role] = nulls[role].update(z_T.double())
            save_null(nulls[role], partial[role])
        if progress is not None:
            progress(nulls["first"].n, n)
    for role, path in paths.items():
        save_null(with_default_scales(nulls[role]), partial[role])
        os.replace(partial[role], path)
    return list(paths.values())


def with_default_scales(null: NullModel) -> NullModel:
    """The null model with what the calibrated test needs of it for keys made by ``keygen`` (each
    pattern's default mask) under the default search computed once (``scheme.calibrated.with_scales``):
    each ``verify`` process would otherwise pay it at its first batch (about 3 s per look on `tiny`)."""
    shape = tuple(null.latent_shape)
    keys = [new_key(null.meta.get("model", ""), shape, pattern=p, seed=0) for p in PATTERNS if p != "zeros"]
    return with_scales(null, keys, search_grid(DEFAULT_SEARCH, shape[-1]))


def _resume(nulls: dict, partial: dict) -> dict:
    """The stopped run's sums, which must be of these settings and of as many images in every look."""
    done = {role: load_null(path) if path.exists() else None for role, path in partial.items()}
    settings = lambda meta: {k: v for k, v in meta.items() if k not in ("file", "target")}  # noqa: E731  (n may change)
    if any(d is None or settings(d.meta) != settings(nulls[role].meta) for role, d in done.items()) \
            or len({d.n for d in done.values()}) > 1:
        raise NullFileError(f"{partial['first']}: a stopped calibration with other settings; use --force to start over")
    return {role: replace(d, meta=nulls[role].meta) for role, d in done.items()}


def _looks(m, x: torch.Tensor, looks: dict, seeds) -> dict[str, torch.Tensor]:
    """The z_T of each look at clean images x: the first and the second at x, the edited one at
    x under a clipping edit (from the first look's z_0 of the edited images, as ``detect`` runs it)."""
    first = run_look(m, x, looks["first"])
    out = {"first": first.z_T}
    if "second" in looks:
        out["second"] = run_look(m, x, looks["second"], z_0=first.z_0).z_T
    if "edited" in looks:
        edited = torch.stack([clipping_edit(image, np.random.default_rng(s)) for image, s in zip(x, seeds)])
        out["edited"] = run_look(m, edited, looks["edited"], z_0=run_look(m, edited, looks["first"]).z_0).z_T
    return out


def clipping_edit(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """An edit of one image (3, H, W) in [-1, 1] that clips more than ``adaptive.EDITED`` of its
    pixel values, so that the edited-image look would test it: a rotation by 10-60 degrees (black
    corners) or not, then a brightness gain of 1.5-5, raised until enough pixels clip."""
    image = to_pil((x[None] + 1) / 2)[0]
    if rng.random() < 0.5:
        image = image.rotate(float(rng.uniform(10, 60) * rng.choice([-1, 1])), resample=Image.Resampling.BICUBIC)
    out = to_tensor([image])[0]
    gain = float(rng.uniform(1.5, 5))
    while True:
        edited = (((out + 1) / 2 * gain).clamp(0, 1) * 255).round() / 127.5 - 1
        if clipped_share(edited[None])[0] > EDITED:
            return edited
        gain *= 1.25


def _clean_files(folder: str | os.PathLike) -> list[str]:
    """The readable images under ``folder``, sorted (a bad file is skipped, not fatal)."""
    usable = []
    for path, error in find_images([str(folder)]):
        if error is None:
            try:
                load_image(path, 8)
                usable.append(path)
            except ImageError:
                pass
    return usable
