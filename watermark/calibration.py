"""``ringmark calibrate``: the null model of one model, recovery and size (``scheme.null``), from
clean images the model generates (or the user's own clean images), written as it goes so that a
stopped run resumes where it stopped.

    path = calibrate("tiny-sd", n=2048)   # -> watermark/models/tiny-sd/null/null-encoder-ddim10-4x32x32.npz
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

from .io.images import ImageError, find_images, load_image
from .io.nullfile import FOLDER, NullFileError, load_null, null_name, recovery_fields, save_null
from .models import NAMED, get_model
from .pipeline import Recovery, check_size, recover_noise
from .scheme.null import NullModel

DEFAULT_IMAGES = 2048  # enough for the per-key tests of tests/test_calibration_model.py (README)
SEED = 10**9  # the first seed of the clean images (far from embed's default seeds 0, 1, ...)


def default_output(model: str, recovery: Recovery, latent_shape: tuple[int, int, int]) -> Path:
    """The model's own folder (``null/``) for a bundled model or a local folder, where ``verify``
    finds it; a hub id needs an explicit output."""
    source = Path(NAMED.get(model, model))
    if not source.is_dir():
        raise NullFileError(f"model {model!r} is not a local folder: give the output file (-o), e.g. beside the keys")
    return source / FOLDER / null_name(recovery, latent_shape)


def calibrate(model: str = "tiny", output: str | os.PathLike | None = None, n: int = DEFAULT_IMAGES,
              size: int | None = None, recovery: Recovery = Recovery(), steps: int = 50, seed: int = SEED,
              images: str | os.PathLike | None = None, batch: int = 16, force: bool = False, device: str = "cpu",
              dtype: str = "float32", progress: Callable[[int, int], None] | None = None) -> Path:
    """Make the null model of ``model`` under ``recovery`` at ``size`` px from ``n`` clean images:
    generated from seeds seed, seed + 1, ... with ``steps`` DDIM steps, or the first ``n`` of the
    images under ``images`` (sorted; unreadable files skipped). Returns the file written: ``output``,
    or in the folder ``output`` the name ``verify`` looks for (``io.nullfile.null_name``).

    The sums so far are kept in ``<output>.partial`` after every batch; a rerun with the same
    settings continues from there. An existing ``output`` is replaced only with ``force``.
    ``progress(done, n)`` after each batch.
    """
    check_size(size)
    for name, value, least in (("n", n, 2), ("steps", steps, 1), ("batch", batch, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    m = get_model(model, device, dtype)
    size = m.default_size if size is None else size
    shape = m.latent_shape(size)
    recovery = recovery.for_model(m.default_recovery)
    output = Path(output) if output is not None else default_output(model, recovery, shape)
    if output.is_dir():  # a folder (beside the keys): the name verify looks for
        output = output / null_name(recovery, shape)
    if output.exists() and not force:
        raise NullFileError(f"{output}: exists; use --force to make it again")
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    source = ({"images": str(Path(images).resolve())} if images is not None
              else {"generated": {"seed": seed, "steps": steps}})
    meta = {"model": model, "recovery": recovery_fields(recovery), "size": size, "target": n, **source}
    files = _clean_files(images) if images is not None else None
    null = NullModel(shape, meta=meta)
    if partial.exists() and not force:
        done = load_null(partial)
        if {k: v for k, v in done.meta.items() if k != "file"} != meta:
            raise NullFileError(f"{partial}: a stopped calibration with other settings; use --force to start over")
        null = NullModel(latent_shape=shape, n=done.n, sum_z=done.sum_z, sum_outer=done.sum_outer, sum_radial=done.sum_radial,
                         meta=meta)
    while null.n < n:
        start = null.n
        count = min(batch, n - start)
        if files is None:
            z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed + i))
                             for i in range(start, start + count)])
            x = m.generate(z, steps) * 2 - 1
        else:
            if start >= len(files):
                raise NullFileError(f"{images}: {len(files)} usable images, {n} asked for")
            x = torch.stack([load_image(f, size).image for f in files[start : start + count]])
        z_T, _ = recover_noise(m, x, recovery)
        null = null.update(z_T.double())
        save_null(null, partial)
        if progress is not None:
            progress(null.n, n)
    os.replace(partial, output)
    return output


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
