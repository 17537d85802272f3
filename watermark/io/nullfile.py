"""Null-model files (``scheme.null``): an ``.npz`` of the sums and a JSON header saying what
made them, found by name beside the model or the keys.

A file is named for what it is valid for: the recovery and the latent shape
(``null_name``), so one folder holds the null models of several recoveries. ``ringmark
calibrate`` writes one; ``verify`` looks for the one of its own recovery in the model's folder,
then in each key file's folder (``find_null``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from inversion import ITERATIVE

from ..scheme.null import FORMAT, VERSION, NullModel

FOLDER = "null"  # inside a model folder


class NullFileError(Exception):
    """A null-model file cannot be read or written (one-line message)."""


def null_name(recovery, latent_shape: tuple[int, int, int]) -> str:
    """``null-<method>[-<iters>]-ddim<steps>[-exact]-<C>x<H>x<W>.npz`` for a ``pipeline.Recovery``
    with every setting filled in."""
    iters = f"-{recovery.iters}" if recovery.method in ITERATIVE else ""
    exact = "-exact" if recovery.exact else ""
    shape = "x".join(map(str, latent_shape))
    return f"null-{recovery.method}{iters}-ddim{recovery.ddim_steps}{exact}-{shape}.npz"


def save_null(null: NullModel, path: str | os.PathLike) -> None:
    """Write atomically (the file is replaced whole: ``calibrate`` rewrites it as it goes)."""
    path = Path(path)
    meta = {k: v for k, v in null.meta.items() if k != "file"}
    header = {"format": FORMAT, "version": VERSION, "latent_shape": list(null.latent_shape), "n": null.n, **meta}
    fd, tmp = tempfile.mkstemp(prefix=".ringmark-null-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), sum_z=null.sum_z.numpy(),
                     sum_outer=null.sum_outer.numpy(), sum_radial=null.sum_radial.numpy())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # not a secret (mkstemp makes 0600): as any file the user writes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_null(path: str | os.PathLike) -> NullModel:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            header = json.loads(str(f["header"]))
            sum_z, sum_outer, f_radial = torch.from_numpy(f["sum_z"]), torch.from_numpy(f["sum_outer"]), f["sum_radial"]
    except (OSError, ValueError, KeyError) as e:
        raise NullFileError(f"{path}: not a ringmark null-model file ({e})") from None
    if header.get("format") != FORMAT or header.get("version") != VERSION:
        raise NullFileError(f"{path}: not a ringmark null-model file of version {VERSION}")
    shape = tuple(header.pop("latent_shape"))
    n = header.pop("n")
    for key in ("format", "version"):
        header.pop(key)
    if tuple(sum_z.shape) != shape or n < 2:
        raise NullFileError(f"{path}: inconsistent null-model file")
    return NullModel(latent_shape=shape, n=n, sum_z=sum_z.double(), sum_outer=sum_outer.double(),
                     sum_radial=torch.from_numpy(f_radial).double(), meta={**header, "file": path.name})


def null_folders(model: str, key_files: list[str | os.PathLike] = ()) -> list[Path]:
    """Where ``verify`` looks for a null model: the model's own folder (bundled name or local
    folder), then the folders of the key files, in order."""
    from ..models import NAMED

    folders = []
    source = Path(NAMED.get(model, model))
    if source.is_dir():
        folders.append(source / FOLDER)
    folders += [Path(k).resolve().parent for k in key_files]
    return list(dict.fromkeys(folders))


def find_null(model: str, recovery, latent_shape: tuple[int, int, int],
              key_files: list[str | os.PathLike] = ()) -> Path | None:
    """The first complete null-model file for this recovery and latent shape (``null_folders``)."""
    name = null_name(recovery, latent_shape)
    for folder in null_folders(model, key_files):
        if (folder / name).is_file():
            return folder / name
    return None


NO_NULL_NOTE = ("no null model for this model, recovery and size: the p-value is exact on average over keys, "
                "not for each key (make one with `ringmark calibrate`)")


def resolve_null(null: str | os.PathLike | NullModel | None, model: str, recovery,
                 latent_shape: tuple[int, int, int], key_files: list[str | os.PathLike] = ()) -> NullModel | None:
    """The null model ``verify`` whitens with: ``"auto"`` finds the one of this recovery and
    latent shape (``find_null``), None if there is none; ``"none"`` or None: none; a path or a
    NullModel: that one, which must fit the recovery and the latent shape."""
    if null is None or null == "none":
        return None
    if isinstance(null, NullModel):
        found = null
    elif null == "auto":
        path = find_null(model, recovery, latent_shape, key_files)
        return None if path is None else check_null(load_null(path), recovery, latent_shape, path)
    else:
        found = load_null(null)
    return check_null(found, recovery, latent_shape, null)


def check_null(null: NullModel, recovery, latent_shape: tuple[int, int, int], source) -> NullModel:
    """Raise NullFileError unless ``null`` was made for this recovery and latent shape."""
    if tuple(null.latent_shape) != tuple(latent_shape):
        raise NullFileError(f"{source}: null model for latent shape {list(null.latent_shape)}, the keys need "
                            f"{list(latent_shape)}")
    made, wanted = null.meta.get("recovery"), recovery_fields(recovery)
    if made is not None and made != wanted:
        raise NullFileError(f"{source}: null model made with recovery {made}, verify runs {wanted}")
    return null


def recovery_fields(recovery) -> dict:
    """What a null model records of the recovery that made it (``check_null`` compares it)."""
    return {"method": recovery.method, "iters": recovery.iters if recovery.method in ITERATIVE else 0,
            "ddim_steps": recovery.ddim_steps, "exact": recovery.exact}
