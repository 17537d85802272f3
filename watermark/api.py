"""The Python API over files: keygen, embed and verify, the operations the CLI exposes.

    from watermark import keygen, embed, verify
    key = keygen("key.json")
    embed(key, "out/", n=4)
    results = verify(["out/"], [key])

Arguments, key files and paths are checked before any model loads. The work on tensors is
``watermark.pipeline`` (verify) and ``watermark.scheme.embedding`` (embed).
"""

from __future__ import annotations

import functools
import json
import os
import hashlib
import secrets
import uuid
import warnings
from datetime import datetime, timezone
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from . import __version__
from .io import credentials
from .io.credentials import Signer
from .io.genlog import Generation, GenerationLog
from .io.images import ImageError, Loaded, find_images, require_usable, save_png, to_tensor
from .io.videos import load_input, save_video
from .io.keyfile import check_writable, load_key, read_json, save_key
from .io.keyring import check_collision, is_keyring, load_keyring, load_keys, locked, save_keyring
from .io.report import check_available, write_report
from .models import ModelError, get_model, makes_video
from .pipeline import Decision, Recovery, check_key_set, check_keys, check_size, make_key
from .scheme.embedding import watermarked_latents
from .scheme.geometry import DEFAULT_SEARCH
from .scheme.keys import DEFAULT_PATTERN, PATTERNS, Key, KeyFileError
from .verifier import Result, Verifier


class OutputError(Exception):
    """An output would overwrite something the user owns (one-line message)."""


KEYGEN_DRAWS = 100  # fresh seeds tried before a keyring is declared full for this pattern


def keygen(output: str | os.PathLike | None, model: str = "tiny", *, size: int | None = None,
           pattern: str = DEFAULT_PATTERN, radius: int | None = None, channels: tuple[int, ...] | None = None,
           seed: int | None = None, force: bool = False, keyring: str | os.PathLike | None = None) -> Key:
    """A new key for ``model`` at ``size`` px (default: the model's), saved to ``output`` if given.

    ``keyring``: also add it to that keyring file (created if missing). A key too close to one
    already there (``io.keyring.MAX_SIMILARITY``) is redrawn, up to KEYGEN_DRAWS times; a key
    from a given ``seed`` is refused instead."""
    _check_key_settings(pattern, size)
    if output is not None:
        check_writable(output, force)
    make = functools.partial(make_key, get_model(model), model_name=model, size=size, pattern=pattern, radius=radius,
                             channels=channels)
    key = _draw(make, seed, existing=[], keyring=None) if keyring is None else _add(keyring, make, [seed])[0]
    if output is not None:
        save_key(key, output, force=force)
    return key


def add_keys(keyring: str | os.PathLike, n: int, model: str = "tiny", *, size: int | None = None,
             pattern: str = DEFAULT_PATTERN, radius: int | None = None,
             channels: tuple[int, ...] | None = None) -> list[Key]:
    """``n`` new keys added to ``keyring`` (created if missing), each drawn as ``keygen`` draws one:
    the ring for a fresh key per image (``embed`` with a keyring; docs/concepts/threats.md)."""
    _check_key_settings(pattern, size)
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    make = functools.partial(make_key, get_model(model), model_name=model, size=size, pattern=pattern, radius=radius,
                             channels=channels)
    return _add(keyring, make, [None] * n)


def _check_key_settings(pattern: str, size: int | None) -> None:
    """Refuse a pattern or size no model is needed to refuse (before one loads)."""
    if pattern not in PATTERNS:
        raise ValueError(f"pattern must be one of {PATTERNS}, got {pattern!r}")
    check_size(size)


def _add(keyring, make: Callable[..., Key], seeds: list) -> list[Key]:
    """New keys from ``make(seed=...)``, one per seed, added to ``keyring`` under its lock (read, check, write)."""
    path = Path(keyring)
    with locked(path.resolve().parent):
        existing = load_keyring(path)[0] if path.exists() else []
        new = []
        for seed in seeds:
            new.append(_draw(make, seed, existing=existing + new, keyring=keyring))
        save_keyring(existing + new, path, force=path.exists())
    return new


def _draw(make: Callable[..., Key], seed: int | None, existing: list[Key], keyring) -> Key:
    """A key from ``make`` not too close to any of ``existing`` (redrawn up to KEYGEN_DRAWS times;
    one from a given ``seed`` is refused instead)."""
    for draw in range(1 if seed is not None else KEYGEN_DRAWS):
        key = make(seed=seed)
        try:
            check_collision(key, existing)
            return key
        except KeyFileError as e:
            if seed is not None or draw == KEYGEN_DRAWS - 1:
                raise KeyFileError(f"{keyring}: {e}" + ("" if seed is not None else
                                   f"; {KEYGEN_DRAWS} fresh keys all collided: this keyring is full for "
                                   f"pattern {key.pattern!r}")) from None


def _as_key(key: Key | str | os.PathLike) -> Key:
    return key if isinstance(key, Key) else load_key(key)


def _embedding_keys(key: Key | str | os.PathLike | list) -> list[Key]:
    """``embed``'s keys: one key (object or file), or a keyring (file or list), all of one model."""
    if isinstance(key, (list, tuple)):
        keys = [_as_key(k) for k in key]
    elif isinstance(key, Key) or not is_keyring(read_json(Path(key))):
        keys = [_as_key(key)]
    else:
        keys = load_keyring(key)[0]
    if not keys:
        raise KeyFileError(f"{key}: no keys")
    if len({k.model for k in keys}) > 1:
        raise KeyFileError("the keys of a keyring used by embed must all be for one model")
    return keys


class OutputWarning(UserWarning):
    """An output that was not written, so as not to overwrite something the user owns."""


class KeyringWarning(UserWarning):
    """A key file or keyring entry that could not be used; the other keys were."""


@dataclass
class Generated:
    file: str
    image_id: str  # its row in the generation log (``embed(log=...)``)
    sha256: str  # of the PNG as written
    seed: int
    prompt: str
    key_id: str | None
    model: str
    watermarked: bool
    steps: int
    guidance: float | None  # None: the model takes no guidance
    c2pa: bool = False  # a C2PA manifest is signed into the PNG (``embed(c2pa=...)``)
    frames: int | None = None  # a clip's length (video models); None: an image


def _check_outputs(outdir: Path, names: list[str], force: bool) -> None:
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"{outdir}: exists and is not a folder")
    clash = [str(outdir / n) for n in names if (outdir / n).exists()]
    if clash and not force:
        raise OutputError(f"{clash[0]}: exists; use --force to overwrite"
                          + (f" ({len(clash)} files)" if len(clash) > 1 else ""))


def embed(key: Key | str | list[Key], outdir: str | os.PathLike, n: int = 4, *, prompts: list[str] | None = None,
          seed: int = 0, steps: int = 50, guidance: float | None = None, watermark: bool = True,
          force: bool = False, device: str = "cpu", dtype: str = "float32", batch: int = 8,
          progress: Callable[[int], None] | None = None, log: str | os.PathLike | None = None,
          c2pa: Signer | None = None, frames: int | None = None, lossless: bool = False) -> list[Generated]:
    """Generate ``n`` images from z_T carrying ``key`` (or clean controls), seeds seed..seed+n-1.

    ``key``: a key (object or file), or a keyring (file or list of keys): each image then carries a
    fresh key drawn from the ring by the operating system's random source (``secrets``), so no two
    images are likely to share one; the manifest records which. That is the defence against
    averaging forgery (docs/concepts/threats.md); verify such images against the whole keyring.
    Writes PNGs and ``manifest.jsonl`` into ``outdir``; existing files there are kept unless ``force``.
    ``log``: also record each image in the generation log there (``io.genlog``: a SQLite path or a
    database URL), batch by batch, with its content fingerprint (``provenance.fingerprint``).
    ``c2pa``: sign Content Credentials into each PNG with this ``io.credentials.Signer`` (made by
    a trained model, the watermark's key id as its soft binding, the log's image id); the log then
    keeps each signed manifest, which ``verify(credentials_out=...)`` gives back for a copy whose
    metadata was stripped.

    A video model (Wan) makes clips of ``frames`` frames (default: the model's), the key in every
    latent frame: H.264 MP4 files, or with ``lossless`` FFV1 in Matroska (.mkv). Clips are not
    logged or signed yet (``log`` and ``c2pa`` are refused for them).
    """
    ring = _embedding_keys(key)
    key = ring[0]
    for name, value in (("n", n), ("steps", steps), ("batch", batch)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if isinstance(prompts, str):
        prompts = [prompts]
    outdir = Path(outdir)
    video = makes_video(key.model)
    if not video and (frames is not None or lossless):
        raise ModelError(f"model {key.model!r} makes images: frames and lossless are for video models")
    if video and (log is not None or c2pa is not None):
        raise ModelError("clips are not logged or signed yet: embed them without --log and --c2pa")
    suffix = (".mkv" if lossless else ".mp4") if video else ".png"
    names = [f"{i:05d}{suffix}" for i in range(n)]
    _check_outputs(outdir, names + ["manifest.jsonl"], force)
    generations = GenerationLog.open(log) if log is not None else None  # a bad log fails before any work
    model = get_model(key.model, device, dtype)
    check_keys(ring, model)
    latent_frames = model.latent_frames(model.default_frames if frames is None else frames) if video else None
    prompts = list(prompts or [""])
    if not model.conditional and (any(prompts) or guidance not in (None, 1.0)):
        raise ModelError(f"model {key.model!r} is unconditional: it takes no prompt or guidance")
    # a model whose guidance is a setting of its own (FLUX: models/flux.py) says which; generate refuses another
    default = getattr(model, "default_guidance", 7.5)
    guidance = (default if guidance is None else guidance) if model.conditional else None
    outdir.mkdir(parents=True, exist_ok=True)
    records = []
    for start in range(0, n, batch):
        idx = list(range(start, min(n, start + batch)))
        seeds = [seed + i for i in idx]
        batch_prompts = [prompts[i % len(prompts)] for i in idx]
        chosen = [ring[secrets.randbelow(len(ring))] for _ in idx]
        z_T = torch.cat([watermarked_latents(k, seeds=[s], watermark=watermark, frames=latent_frames)
                         for k, s in zip(chosen, seeds)])
        images = model.generate(z_T, steps, batch_prompts if model.conditional else None, guidance)
        made, manifests = [], {}
        for i, s, p, im, k in zip(idx, seeds, batch_prompts, images, chosen):
            if video:
                save_video(im, outdir / names[i], lossless=lossless, model=key.model)
            else:
                save_png(im, outdir / names[i], model=key.model)
            image_id, key_id = uuid.uuid4().hex, k.key_id if watermark else None
            if c2pa is not None:
                manifests[image_id] = c2pa.sign(outdir / names[i], credentials.manifest(
                    title=names[i], model=key.model, key_id=key_id, image_id=image_id, version=__version__))
            made.append(Generated(file=names[i], image_id=image_id, sha256=sha256(outdir / names[i]), seed=s,
                                  prompt=p, key_id=key_id, model=key.model, watermarked=watermark, steps=steps,
                                  guidance=guidance, c2pa=c2pa is not None,
                                  frames=(model.default_frames if frames is None else frames) if video else None))
            if progress is not None:
                progress(1)
        if generations is not None:
            generations.add(logged(made, load_pngs(outdir, made), folder=outdir, manifests=manifests))
        records += made
    stale = _previous_run(outdir) - set(names)
    with open(outdir / "manifest.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(asdict(r)) + "\n")
    for name in stale:  # a run replaced with --force leaves none of its images beside the new manifest
        (outdir / name).unlink(missing_ok=True)
    return records


def _previous_run(outdir: Path) -> set[str]:
    """The images the manifest already in ``outdir`` lists (embed's own, from a run being replaced)."""
    try:
        lines = (outdir / "manifest.jsonl").read_text().splitlines()
        files = {json.loads(line).get("file") for line in lines if line.strip()}
    except (OSError, ValueError, AttributeError):
        return set()
    return {f for f in files if isinstance(f, str) and "/" not in f and "\\" not in f
            and f.endswith((".png", ".mp4", ".mkv"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_pngs(outdir: Path, made: list[Generated]) -> torch.Tensor:
    """The images as written (8 bits), in [-1, 1]: what a verifier will read."""
    from PIL import Image

    return to_tensor([Image.open(outdir / g.file).convert("RGB") for g in made])


def logged(made: list[Generated], x: torch.Tensor, folder: str | os.PathLike | None = None,
           manifests: dict[str, bytes] | None = None) -> list[Generation]:
    """The generation-log rows of images just made: with the content fingerprint of each (its
    thumbnail, ``provenance.fingerprint.pixels``; ``x``: the images as written, in [-1, 1]).
    ``folder``: where the images were written; the rows then record each file's absolute path (the
    report shows the logged image beside a suspect when it is still there). ``manifests``: image id
    -> the C2PA manifest store signed into it."""
    from .provenance import fingerprint

    prints = fingerprint.pixels(x.float().cpu()).numpy()
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    return [Generation(image_id=g.image_id, key_id=g.key_id, model=g.model, seed=g.seed, prompt=g.prompt,
                       steps=g.steps, guidance=g.guidance, created=now,
                       file=g.file if folder is None else str(Path(folder).resolve() / g.file), sha256=g.sha256,
                       fingerprint=f.astype("float16"), fingerprint_kind=fingerprint.PIXEL_KIND,
                       c2pa=(manifests or {}).get(g.image_id))
            for g, f in zip(made, prints)]


def rebuild_log(log: str | os.PathLike, folder: str | os.PathLike, *, batch: int = 64) -> tuple[int, int]:
    """Log the images of an ``embed`` output folder (``manifest.jsonl`` and its PNGs) in ``log``,
    fingerprints made anew; rows already logged are skipped. A manifest written before the log
    existed has no image ids: each image's is then the start of its SHA-256. The C2PA manifest a PNG
    carries (``embed --c2pa``) is logged with it. Returns (logged, skipped)."""
    folder = Path(folder)
    manifest = folder / "manifest.jsonl"
    if not manifest.is_file():
        raise OutputError(f"{folder}: no manifest.jsonl (not an embed output folder)")
    try:
        rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
        made = []
        for r in rows:
            digest = sha256(folder / r["file"])
            if r.get("sha256", digest) != digest:
                raise OutputError(f"{folder / r['file']}: changed since embed wrote it (SHA-256 differs)")
            made.append(Generated(**{**r, "image_id": r.get("image_id") or digest[:32], "sha256": digest}))
    except (ValueError, KeyError, TypeError) as e:
        raise OutputError(f"{manifest}: not an embed manifest ({e})") from None
    generations = GenerationLog.open(log)
    known = generations.known([g.image_id for g in made])
    todo = [g for g in made if g.image_id not in known]
    for i in range(0, len(todo), batch):  # the thumbnails need no model
        part = todo[i : i + batch]
        signed = {g.image_id: credentials.embedded_store((folder / g.file).read_bytes()) for g in part}
        generations.add(logged(part, load_pngs(folder, part), folder=folder, manifests=signed))
    return len(todo), len(made) - len(todo)


def verify(paths: list[str], keys: list[Key | str], recovery: Recovery = Recovery(), *, alpha: float = 0.01,
           search: str = DEFAULT_SEARCH, one_key: bool = False, min_consistency: float | None = None,
           null: str | os.PathLike | None = "auto", key_files: list = (), device: str = "cpu",
           dtype: str = "float32", batch: int = 8, progress: Callable[[int], None] | None = None,
           report: str | os.PathLike | None = None, force: bool = False,
           log: str | os.PathLike | None = None, credentials_out: str | os.PathLike | None = None) -> list[Result]:
    """Test every image under ``paths`` against ``keys`` (Key objects, key files, keyring files,
    folders of them; a bad file or entry in a folder or keyring is skipped with a KeyringWarning);
    one Result per image, in order. ``alpha``, ``search`` (the rotations and crops undone before the
    test, counted in the p-value), ``one_key`` and ``min_consistency`` (the defences against forgery,
    docs/concepts/threats.md) make the ``pipeline.Decision``. ``null``: the null model that makes the p-value
    exact for each key (``scheme.null``): "auto" finds the one of this recovery in the model's folder or
    beside the key files (those in ``keys`` and ``key_files``), "none" runs the test without one, else a
    file (``ringmark calibrate``).

    An image that cannot be read gets a Result with ``error`` set; the others go on.
    ``progress(k)``: k more images done, called as the work advances (not once per batch).
    ``report``: also write the HTML evidence report there (``io.report``; an existing file is kept
    unless ``force``). ``log``: the generation log (``embed(log=...)``); each watermarked row then
    says whether a generation logged under its key matches its content (``provenance.check``).
    ``credentials_out``: a folder where each row's recovered Content Credentials go
    (``Result.credentials_recovered``: the signed manifest store the log kept for the confirmed
    generation, as ``<image id>.c2pa``); needs ``log``.
    """
    if credentials_out is not None and log is None:
        raise ValueError("credentials_out needs the generation log (log=...): the manifests are kept there")
    if credentials_out is not None and Path(credentials_out).exists() and not Path(credentials_out).is_dir():
        raise OutputError(f"{credentials_out}: exists and is not a folder")
    decision = Decision(alpha=alpha, search=search, one_key=one_key, min_consistency=min_consistency)
    if report is not None:
        check_available()
        _check_outputs(Path(report).parent, [Path(report).name], force)
    if batch < 1:
        raise ValueError(f"batch must be positive, got {batch}")
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    keys = [keys] if isinstance(keys, (Key, str, os.PathLike)) else list(keys)
    key_files = [k for k in keys if isinstance(k, (str, os.PathLike))] + list(key_files)
    keys, problems = load_keys(keys)
    for problem in problems:
        warnings.warn(problem, KeyringWarning, stacklevel=2)
    check_key_set(keys)
    found = find_images([str(p) for p in paths], videos=makes_video(keys[0].model))  # a folder's clips: for video keys
    require_usable(found)
    verifier = Verifier(keys, recovery, decision, device=device, dtype=dtype, null=null, key_files=key_files, log=log)
    results: list[Result | None] = [None] * len(found)
    detections: list = [None] * len(found)  # with their Evidence when a report is asked for
    done = _Done(progress)
    pending: list[tuple[int, str, Loaded]] = []  # read, waiting for a full batch
    for i, (path, error) in enumerate(found):
        try:
            if error is None:
                pending.append((i, path, load_input(path, verifier.size, verifier.video)))
        except ImageError as e:
            error = str(e)
        if error is not None:
            results[i] = verifier.failed(path, error)
            done.to(done.count + 1)
        if len(pending) == batch or (pending and i == len(found) - 1):
            _run(verifier, pending, (results, detections), done, evidence="hits" if report is not None else None)
            pending = []
    if report is not None:
        write_report(report, results, detections, model=keys[0].model, log=verifier.log)
    if credentials_out is not None:
        _write_credentials(Path(credentials_out), results, verifier.log, force)
    return results


def _write_credentials(folder: Path, results: list[Result], log: GenerationLog, force: bool) -> None:
    """``<image id>.c2pa`` in ``folder`` for each recovered manifest: the log's bytes, as signed. A
    file there already with other bytes is kept unless ``force``, with a warning (the rows stand)."""
    for image_id in dict.fromkeys(r.credentials_recovered for r in results if r.credentials_recovered):
        data, path = log.manifest(image_id), folder / f"{image_id}.c2pa"
        if path.exists() and path.read_bytes() != data and not force:
            warnings.warn(f"{path}: exists with other content, kept; use --force to overwrite", OutputWarning,
                          stacklevel=3)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class _Done:
    """Images done so far, reported to ``progress`` as increments."""

    def __init__(self, progress: Callable[[int], None] | None):
        self.progress, self.count = progress, 0

    def to(self, count: int) -> None:
        if self.progress is not None and count > self.count:
            self.progress(count - self.count)
        self.count = max(self.count, count)


def _run(verifier: Verifier, items: list[tuple[int, str, Loaded]], into: tuple[list, list], done: _Done,
         evidence: bool) -> None:
    """One batch into (results, detections) at its images' places, progress reported as its
    network calls advance."""
    before = done.count
    pairs = verifier.verify([(path, loaded) for _, path, loaded in items],
                            progress=lambda f: done.to(before + int(f * len(items))), evidence=evidence)
    for (i, _, _), (row, detection) in zip(items, pairs):
        into[0][i], into[1][i] = row, detection
    done.to(before + len(items))
