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


def null_name(look, latent_shape: tuple[int, int, int]) -> str:
    """``null-[<start>+]<method>[<iters>][-edited]-ddim<steps>[-exact][-photometric]-<C>x<H>x<W>.npz``
    for a ``recovery.LookSpec``: one name for everything that makes the look's z_T (``recovery_fields``)."""
    start = f"{look.start}+" if look.start is not None else ""
    iters = str(look.iters) if look.method in ITERATIVE else ""
    role = "-edited" if look.role == "edited" else ""
    exact = "-exact" if look.exact else ""
    photometric = "-photometric" if look.photometric else ""
    shape = "x".join(map(str, latent_shape))
    return f"null-{start}{look.method}{iters}{role}-ddim{look.ddim_steps}{exact}{photometric}-{shape}.npz"


def save_null(null: NullModel, path: str | os.PathLike) -> None:
    """Write atomically (the file is replaced whole: ``calibrate`` rewrites it as it goes)."""
    path = Path(path)
    meta = {k: v for k, v in null.meta.items() if k != "file"}
    scales = {tag: v for tag, v in null.cache.items() if tag[0] == "scale"}  # ``calibrated.scale_tag``
    header = {"format": FORMAT, "version": VERSION, "latent_shape": list(null.latent_shape), "n": null.n, **meta,
              "scales": [{"radius": r, "channels": list(c), "grid": g} for _, r, c, g in scales]}
    fd, tmp = tempfile.mkstemp(prefix=".ringmark-null-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, header=np.array(json.dumps(header)), sum_z=null.sum_z.numpy(),
                     sum_outer=null.sum_outer.numpy(), sum_radial=null.sum_radial.numpy(), samples=null.samples.numpy(),
                     **{f"scale_{i}": v.numpy() for i, v in enumerate(scales.values())})
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
            if header.get("format") != FORMAT or header.get("version") != VERSION:
                raise NullFileError(f"{path}: not a ringmark null-model file of version {VERSION} (version "
                                    f"{header.get('version')}: make it again with `ringmark calibrate`)")
            sum_z, sum_outer, f_radial = torch.from_numpy(f["sum_z"]), torch.from_numpy(f["sum_outer"]), f["sum_radial"]
            samples = torch.from_numpy(f["samples"])
            scales = {("scale", s["radius"], tuple(s["channels"]), s["grid"]): torch.from_numpy(f[f"scale_{i}"])
                      for i, s in enumerate(header.pop("scales", []))}
            scales = {tag: v for tag, v in scales.items() if v.ndim == 2}  # (T,) before the standard errors: remade
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NullFileError(f"{path}: not a ringmark null-model file ({e})") from None
    shape = tuple(header.pop("latent_shape"))
    n = header.pop("n")
    for key in ("format", "version"):
        header.pop(key)
    if tuple(sum_z.shape) != shape or n < 2 or tuple(samples.shape) != (n, *shape):
        raise NullFileError(f"{path}: inconsistent null-model file")
    return NullModel(latent_shape=shape, n=n, sum_z=sum_z.double(), sum_outer=sum_outer.double(),
                     sum_radial=torch.from_numpy(f_radial).double(), samples=samples, meta={**header, "file": path.name},
                     cache=scales)


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


def no_null_note(roles: list[str]) -> str:
    """The note of rows whose looks in ``roles`` have no null model."""
    return (f"no null model for the {' and '.join(roles)} look of this model, recovery and size: its p-value is "
            "exact on average over keys, not for each key (make one with `ringmark calibrate`)")


def resolve_nulls(null: str | os.PathLike | NullModel | None, model: str, looks: dict,
                  latent_shape: tuple[int, int, int], key_files: list[str | os.PathLike] = ()) -> dict:
    """The null model of each look (``recovery.LookSpec``, by role) ``verify`` tests with:
    ``"auto"`` finds each look's own (``find_null``), None where there is none; ``"none"`` or None:
    none; a path or a NullModel: that one for the look it was made for (it must be made for one
    of them), the others found as with ``"auto"``."""
    if null is None or null == "none":
        return {role: None for role in looks}
    if isinstance(null, dict):  # already resolved (``resolve_nulls`` in the process that ships them)
        return {role: null.get(role) for role in looks}
    given, source = None, null
    if isinstance(null, NullModel):
        given = null
    elif null != "auto":
        given = load_null(null)
    out = {}
    for role, look in looks.items():
        if given is not None and given.meta.get("recovery", recovery_fields(looks["first"])) == recovery_fields(look):
            out[role] = check_null(given, look, latent_shape, source)
        else:
            path = find_null(model, look, latent_shape, key_files)
            out[role] = None if path is None else check_null(load_null(path), look, latent_shape, path)
    if given is not None and not any(n is given for n in out.values()):
        check_null(given, looks["first"], latent_shape, source)  # raises: made for none of the looks
    return out


def check_null(null: NullModel, look, latent_shape: tuple[int, int, int], source) -> NullModel:
    """Raise NullFileError unless ``null`` was made for this look (``recovery_fields``) and latent shape."""
    if tuple(null.latent_shape) != tuple(latent_shape):
        raise NullFileError(f"{source}: null model for latent shape {list(null.latent_shape)}, the keys need "
                            f"{list(latent_shape)}")
    made, wanted = null.meta.get("recovery"), recovery_fields(look)
    if made is not None and made != wanted:
        raise NullFileError(f"{source}: null model made with recovery {made}, verify's {look.role} look runs {wanted}")
    return null


def recovery_fields(look) -> dict:
    """What a null model records of the look that made it (``check_null`` compares it): the whole
    ``recovery.LookSpec``, so a null made with another recovery is refused."""
    return dict(look.fields)
