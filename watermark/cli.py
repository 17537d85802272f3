"""The ``ringmark`` command line: each command parses its options, calls one function of
``watermark.api`` (or ``watermark.bench``), and prints.

stdout carries data only (tables, JSON lines); messages, warnings and progress go to stderr.
"""

from __future__ import annotations

import contextlib
import functools
import json
import shlex
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import click

from . import __version__
from .choices import (ATTACKS, DEFAULT_ITERS, DEFAULT_PATTERN, DEFAULT_SEARCH, DEFAULT_STEPS, DEVICES, DTYPE_NAMES,
                      METHOD_NAMES, PATTERNS, RAY_LOG_LEVELS, SEARCHES, VIDEO_ATTACKS, WEAK_EVIDENCE)

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Failure(click.ClickException):
    """A one-line error on stderr and exit status 2 (usage errors and unusable input)."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"ringmark: error: {self.format_message()}", err=True)


def return_code(results) -> int:
    """The exit status of ``verify``: 2 if any input could not be processed (its result carries
    the error), else 0 if at least one image was found watermarked, else 1."""
    if any(r.error is not None for r in results):
        return 2
    return 0 if any(r.watermarked for r in results) else 1


def library_errors(fn):
    """Map the library's exceptions to one-line CLI errors (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .api import OutputError
        from .io.results import ResultsError
        from .models import ModelError
        from .scale.cluster import ScaleError
        from .io.nullfile import NullFileError
        from .io.report import ReportError
        from .scheme.keys import KeyFileError
        from .io.genlog import LogError
        from .io.credentials import CredentialsError

        try:
            return fn(*args, **kwargs)
        except (CredentialsError, KeyFileError, LogError, ModelError, NullFileError, OutputError, ReportError,
                ResultsError, ScaleError, ValueError) as e:
            raise Failure(str(e)) from None
        except OSError as e:  # e.g. an output folder that cannot be written
            where = f"{e.filename}: " if e.filename else ""
            raise Failure(f"{where}{e.strerror or e}") from None

    return wrapper


def device_options(fn):
    fn = click.option("--dtype", type=click.Choice(DTYPE_NAMES), default="float32", show_default=True,
                      help="Precision of the networks (float16 is for GPUs: on a CPU it runs, many times slower).")(fn)
    fn = click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
                      help="auto: CUDA when present, else CPU.")(fn)
    return fn


def messages(quiet: bool, prefix: str = "") -> Callable[[str], None]:
    """Where a command's messages go: stderr, or nowhere with -q."""
    return (lambda m: None) if quiet else (lambda m: click.echo(prefix + m, err=True))


def quiet_option(fn):
    return click.option("-q", "--quiet", is_flag=True, help="No messages or progress on stderr.")(fn)


class Progress:
    """Items done (images, or ``unit``), on stderr: a bar on a terminal, else a line every ``every``
    seconds and at the end."""

    def __init__(self, total: int, label: str, quiet: bool, every: float = 10.0, unit: str = "images"):
        self.total, self.label, self.done, self.every, self.unit = total, label, 0, every, unit
        self.t0 = self.last = time.time()
        self.off = quiet or total <= 1
        self.bar = None
        if not self.off and sys.stderr.isatty():
            self.bar = click.progressbar(length=total, label=label, file=sys.stderr)

    def update(self, k: int) -> None:
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
        elif not self.off and (time.time() - self.last >= self.every or self.done == self.total):
            self.last = time.time()
            click.echo(f"{self.label}: {self.done}/{self.total} {self.unit}, {self.last - self.t0:.0f}s", err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.render_finish()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ringmark")
def main():
    """Watermark images of latent diffusion models in their initial noise, and verify them.

    \b
    ringmark demo                       # the whole loop on the bundled model
    ringmark keygen -o key.json
    ringmark embed --key key.json -o out/ -n 8
    ringmark verify out/ --key key.json --json
    ringmark serve --key key.json                     # HTTP, on Ray Serve
    ringmark scan uploads/ --key key.json -o results.parquet   # batch, on Ray Data
    """


def csv_channels(ctx, param, value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(",") if v)
    except ValueError:
        raise click.BadParameter(f"expected comma-separated channel numbers, got {value!r}") from None


@main.command(context_settings=CONTEXT)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Key file to write (0600).")
@click.option("--keyring", type=click.Path(dir_okay=False),
              help="Also add the key to this keyring file (created if missing), refusing keys too close to its own.")
@click.option("-n", "count", type=click.IntRange(1),
              help="Add this many keys to --keyring and write no key file: the ring for a fresh key per image "
                   "(embed --key RING).")
@click.option("--model", default="tiny", show_default=True, help="'tiny', 'tiny-sd', 'tiny-flow', 'tiny-video' (bundled), a hub id or a local folder.")
@click.option("--size", type=click.IntRange(1), help="Image side in px (default: the model's).")
@click.option("--pattern", type=click.Choice(PATTERNS), default=DEFAULT_PATTERN, show_default=True)
@click.option("--radius", type=int, help="Mask radius in latent bins (default: 14/64 of the side; ring, zeros: 10/64).")
@click.option("--channels", callback=csv_channels,
              help="Latent channels, e.g. 0,3 (default: all; ring, zeros: the model's key channel).")
@click.option("--seed", type=click.IntRange(0), help="Secret seed (default: 128 random bits).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@quiet_option
@library_errors
def keygen(output, keyring, count, model, size, pattern, radius, channels, seed, force, quiet):
    """Make a new secret key, or a keyring of many.

    Examples: ringmark keygen -o key.json --keyring ring.json;
    ringmark keygen --keyring ring.json -n 2048
    """
    from . import api

    if count is not None:
        if keyring is None or output is not None or seed is not None:
            raise click.UsageError("-n takes --keyring, and neither -o nor --seed")
        keys = api.add_keys(keyring, count, model, size=size, pattern=pattern, radius=radius, channels=channels)
        if not quiet:
            click.echo(f"added {len(keys)} keys ({pattern}) to {keyring}", err=True)
        click.echo(json.dumps({"keyring": keyring, "added": len(keys)}))
        return
    if output is None:
        raise click.UsageError("give -o FILE (or --keyring RING -n N for many keys)")
    key = api.keygen(output, model, size=size, pattern=pattern, radius=radius, channels=channels, seed=seed,
                     force=force, keyring=keyring)
    if not quiet:
        click.echo(f"wrote {output} (key id {key.key_id}, {pattern}, radius {key.radius}, channels "
                   f"{list(key.channels)}, latent {list(key.latent_shape)})"
                   + (f"; added to {keyring}" if keyring else ""), err=True)
    click.echo(json.dumps({"key": output, "key_id": key.key_id}))


@main.command(context_settings=CONTEXT)
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False),
              help="Key file, or keyring: then each image carries a fresh key drawn at random from it.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Folder for PNGs + manifest.")
@click.option("-n", default=4, show_default=True, type=click.IntRange(1), help="Number of images.")
@click.option("--prompt", help="Prompt (text-conditioned models).")
@click.option("--prompts", "prompts_file", type=click.File(), help="File of prompts, one per line, used in turn.")
@click.option("--seed", default=0, show_default=True, help="Seed of the first image; the next get seed+1, ...")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="DDIM steps.")
@click.option("--guidance", type=float, help="Classifier-free guidance, text-conditioned models only [default: the "
              "model's: 7.5; FLUX: its ringmark.json's, else 3.5, and no other].")
@click.option("--no-watermark", is_flag=True, help="Clean controls: same model and seeds, no key.")
@click.option("--force", is_flag=True, help="Overwrite existing images/manifest in OUTDIR.")
@click.option("--log", "log", envvar="RINGMARK_LOG", show_envvar=True, metavar="LOG",
              help="Also record each image in this generation log: a SQLite file (made if missing) or a "
              "database URL (postgresql://...) [default: none, or $RINGMARK_LOG].")
@click.option("--c2pa", "c2pa", is_flag=True,
              help="Sign Content Credentials (a C2PA manifest) into each PNG: made by a trained model, the watermark "
                   "as its soft binding; with --log, the log keeps each signed manifest.")
@click.option("--c2pa-cert", envvar="RINGMARK_C2PA_CERT", show_envvar=True, type=click.Path(dir_okay=False),
              help="The signing certificate chain (PEM, signer first) for --c2pa.")
@click.option("--c2pa-key", envvar="RINGMARK_C2PA_KEY", show_envvar=True, type=click.Path(dir_okay=False),
              help="Its private key (PEM, unencrypted; keep it owner-only) for --c2pa.")
@click.option("--frames", type=click.IntRange(1), help="Video models: frames per clip [default: the model's; Wan: "
              "1 + 4k, 81].")
@click.option("--lossless", is_flag=True, help="Video models: FFV1 in Matroska (.mkv) instead of H.264 MP4.")
@device_options
@quiet_option
@library_errors
def embed(key_path, outdir, n, prompt, prompts_file, seed, steps, guidance, no_watermark, force, log, c2pa, c2pa_cert,
          c2pa_key, frames, lossless, device, dtype, quiet):
    """Generate watermarked images, or clips with a video model (the model is the key's).

    Example: ringmark embed --key key.json -o out/ -n 8 --seed 0
    """
    from . import api

    if prompt is not None and prompts_file is not None:
        raise click.UsageError("give --prompt or --prompts, not both")
    prompts = [prompt] if prompt is not None else None
    if prompts_file is not None:
        prompts = [line.strip() for line in prompts_file if line.strip()]
        if not prompts:
            raise Failure(f"{prompts_file.name}: no prompts in file")
    signer = None
    if c2pa:
        from .io.credentials import CredentialsError, Signer

        if not (c2pa_cert and c2pa_key):
            raise CredentialsError("--c2pa needs the signing certificate and its key: --c2pa-cert and --c2pa-key "
                                   "(or RINGMARK_C2PA_CERT and RINGMARK_C2PA_KEY; a test chain: ringmark c2pa test-chain)")
        signer = Signer(c2pa_cert, c2pa_key)
    elif c2pa_cert or c2pa_key:
        raise click.UsageError("--c2pa-cert and --c2pa-key sign only with --c2pa")
    t0 = time.time()
    progress = Progress(n, "embedding", quiet)
    try:
        records = api.embed(key_path, outdir, n, prompts=prompts, seed=seed, steps=steps, guidance=guidance,
                            watermark=not no_watermark, force=force, device=device, dtype=dtype,
                            progress=progress.update, log=log, c2pa=signer, frames=frames, lossless=lossless)
    finally:
        progress.close()
    for r in records:
        click.echo(json.dumps(asdict(r)))
    if not quiet:
        kind = "clean" if no_watermark else "watermarked"
        noun = "clips" if records and records[0].frames else "images"
        click.echo(f"wrote {len(records)} {kind} {noun} and manifest.jsonl to {outdir} in {time.time() - t0:.1f}s",
                   err=True)


def verdict(r) -> str:
    """The table's word for a row: the report's (``io.report.verdict``), positives and errors in capitals."""
    from .io.report import verdict as word

    return word(r).replace("watermarked", "WATERMARKED").replace("error", "ERROR")


def table(results) -> str:
    """One row per image, then a summary line with alpha."""
    rows = [("path", "verdict", "p_value", "key_id", "distance", "note")]
    for r in results:
        if r.error is not None:
            rows.append((r.path, "ERROR", "-", "-", "-", r.error))
        else:
            undone = f"best after undoing {r.transform}" if r.watermarked and r.transform != "identity" else ""
            note = "; ".join(n for n in (r.note, undone, credentials_note(r)) if n)
            rows.append((r.path, verdict(r), f"{r.p_value:.3g}", r.key_id, f"{r.distance:.3f}", note))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5] for row in rows]
    return "\n".join(lines + [summary(results)])


def credentials_note(r) -> str:
    """The table's word on a row's Content Credentials (nothing where the image has none)."""
    words = []
    if r.credentials not in (None, "absent"):
        words.append(f"credentials {r.credentials}" + (f" ({r.credentials_why})" if r.credentials_why else "")
                     + (f", signed by {r.credentials_signer}" if r.credentials_signer else ""))
    if r.credentials_recovered:
        words.append(f"credentials recovered from the log: {r.credentials_recovered}")
    return "; ".join(words)


def summary(results) -> str:
    ok = [r for r in results if r.error is None]
    alpha = results[0].alpha if results else float("nan")
    line = f"{sum(bool(r.watermarked) for r in ok)} of {len(ok)} watermarked at alpha = {alpha:g}"
    weak = sum(bool(r.weak) for r in ok)
    errors = len(results) - len(ok)
    extra = ([f"{weak} weak (p within {WEAK_EVIDENCE:g}x of alpha)"] * bool(weak)
             + [f"{errors} could not be read"] * bool(errors))
    return line + (f"; {', '.join(extra)}" if extra else "")


def verification_options(fn):
    """The keys and how to recover and decide: shared by verify, serve and scan."""
    fn = device_options(fn)
    for option in reversed([
        click.option("--key", "key_paths", required=True, multiple=True, type=click.Path(),
                     help="Key file, keyring file or folder of them; repeat for more (the p-value is corrected "
                          "for every key tested)."),
        click.option("--search", type=click.Choice(SEARCHES), default=DEFAULT_SEARCH, show_default=True,
                     help="Rotations and crops undone before the test (counted in the p-value)."),
        click.option("--inversion", type=click.Choice(METHOD_NAMES), default=None,
                     help="Decoder inversion method [default: the one the key's model declares, measured for it; "
                          "the encoder on every bundled model and on SD checkpoints; on tiny with --photometric and "
                          "--refine attack_aware:2]."),
        click.option("--iters", type=click.IntRange(0), default=None,
                     help=f"Decoder-inversion iterations of the iterative methods (the encoder runs none) "
                          f"[default: the model's; {DEFAULT_ITERS} for a method it does not declare]."),
        click.option("--ddim-steps", default=None, type=click.IntRange(1),
                     help=f"DDIM-inversion steps [default: the model's, else {DEFAULT_STEPS}]."),
        click.option("--exact", is_flag=True, help="Exact (fixed-point) DDIM inversion; 4x the UNet evaluations."),
        click.option("--photometric/--no-photometric", default=None,
                     help="Attack-aware: undo a global brightness change (gain and clipped pixels) before recovery "
                          "[default: the model's]."),
        click.option("--refine", metavar="METHOD:ITERS|none", default=None,
                     help="Adaptive recovery: images the first look leaves unclear (p near alpha, two keys close) are "
                          "refined by METHOD for ITERS iterations and tested again, their p corrected for the two looks "
                          "(e.g. attack_aware:2); with attack_aware, an image clipped by an edit is recovered by it "
                          "alone (at least 10 iterations) and tested once [default: the model's]."),
        click.option("--null", default="auto", show_default=True,
                     help="Null-model file that makes the p-value exact for each key ('ringmark calibrate'); "
                          "'auto': the one of this recovery in the model's folder or beside the key files; "
                          "'none': the test without one (exact on average over keys)."),
        click.option("--alpha", default=0.01, show_default=True,
                     type=click.FloatRange(0, 1, min_open=True, max_open=True),
                     help="Decision level: watermarked when p <= alpha."),
        click.option("--log", "generation_log", envvar="RINGMARK_LOG", show_envvar=True, metavar="LOG",
                     help="The generation log (embed --log; a SQLite file or a database URL): each watermarked "
                          "image is 'confirmed' when a generation logged under its key matches its content, else "
                          "'unconfirmed'; 'unchecked' without a log."),
    ]):
        fn = option(fn)
    return fn


def load_cli_keys(key_paths, quiet: bool):
    """Keys from --key sources, a warning per unusable file or entry."""
    from .io.keyring import load_keys

    keys, problems = load_keys(list(key_paths))
    if not quiet:
        for problem in problems:
            click.echo(f"ringmark: warning: {problem} (skipped; {len(keys)} keys in use)", err=True)
    return keys


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@verification_options
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line.")
@click.option("--report", type=click.Path(dir_okay=False),
              help="Also write an HTML evidence report (one self-contained file; needs the report extra).")
@click.option("--force", is_flag=True, help="Overwrite an existing --report file or recovered credentials.")
@click.option("--credentials-out", type=click.Path(file_okay=False), metavar="DIR",
              help="With --log: write the Content Credentials the log kept for each confirmed image that lost its "
                   "own (stripped metadata) to DIR/<image id>.c2pa.")
@click.option("--one-key", is_flag=True, help="Defence: an image that matches two keys of the keyring is not watermarked.")
@click.option("--consistency", "min_consistency", type=float, metavar="DB",
              help="Defence: a match whose image regenerates from its recovered z_T further than DB (PSNR) from "
                   "itself is not watermarked; one generation per match (docs/concepts/threats.md).")
@quiet_option
@library_errors
def verify(paths, key_paths, search, inversion, iters, ddim_steps, exact, photometric, refine, null, alpha, batch,
           as_json, report, force, credentials_out, one_key, min_consistency, generation_log, device, dtype, quiet):
    """Test images (files or folders, recursively) for the watermark of one or more keys.

    Exit status: 0 if at least one image is watermarked, 1 if none is, 2 if any input could
    not be processed (or on a usage error).

    Example: ringmark verify suspect/ --key key.json --json > results.jsonl
    """
    from .pipeline import Recovery
    results = run_verify(paths, key_paths, Recovery(inversion, iters, ddim_steps, exact, refine=refine, photometric=photometric),
                         dict(alpha=alpha, search=search, one_key=one_key, min_consistency=min_consistency),
                         null=null, batch=batch, device=device, dtype=dtype, quiet=quiet, report=report, force=force,
                         log=generation_log, credentials_out=credentials_out)
    if not quiet:
        for r in results:
            if r.warning:
                click.echo(f"ringmark: warning: {r.path}: {r.warning}", err=True)
    if as_json:
        for r in results:
            click.echo(json.dumps(asdict(r)))
        if not quiet:
            click.echo(summary(results), err=True)
    else:
        click.echo(table(results))
    if report is not None and not quiet:
        click.echo(f"ringmark: wrote the evidence report {report}", err=True)
    recovered = len({r.credentials_recovered for r in results if r.credentials_recovered})
    if credentials_out is not None and not quiet:
        click.echo(f"ringmark: {recovered} recovered Content Credentials in {credentials_out}", err=True)
    sys.exit(return_code(results))


@library_errors
def run_verify(paths, key_paths, recovery, decision: dict, *, null, batch, device, dtype, quiet, report=None,
               force=False, log=None, credentials_out=None):
    """``api.verify`` with the CLI's keys (a warning per unusable one) and progress; ``decision``:
    its alpha, search and defences."""
    from . import api
    from .io.images import find_images
    from .models import makes_video

    if credentials_out is not None and log is None:
        raise click.UsageError("--credentials-out needs --log (the log keeps the signed manifests)")
    keys = load_cli_keys(key_paths, quiet)
    video = bool(keys) and makes_video(keys[0].model)
    progress = Progress(len(find_images(list(paths), videos=video)), "verifying", quiet, unit="files" if video else "images")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", api.OutputWarning)
            results = api.verify(list(paths), keys, recovery, **decision, null=null, key_files=list(key_paths),
                                 device=device, dtype=dtype, batch=batch, progress=progress.update, report=report,
                                 force=force, log=log, credentials_out=credentials_out)
    finally:
        progress.close()
    for w in caught:
        if not issubclass(w.category, api.OutputWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif not quiet:
            click.echo(f"ringmark: warning: {w.message}", err=True)
    return results


def read_token(token_file: str | None) -> str | None:
    """The bearer token from --token-file, else RINGMARK_TOKEN, else None."""
    import os

    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise Failure(f"{token_file}: {e.strerror or e}") from None
        if not token:
            raise Failure(f"{token_file}: the token file is empty")
        return token
    return os.environ.get("RINGMARK_TOKEN", "").strip() or None


@main.command(context_settings=CONTEXT)
@verification_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback needs a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--token-file", type=click.Path(dir_okay=False),
              help="File holding the bearer token clients must send (else RINGMARK_TOKEN).")
@click.option("--replicas", default=1, show_default=True, type=click.IntRange(1), help="Copies of the model.")
@click.option("--max-batch", default=8, show_default=True, type=click.IntRange(1),
              help="Images of concurrent requests verified together.")
@click.option("--batch-wait-ms", default=20.0, show_default=True, type=click.FloatRange(0),
              help="How long a batch waits to fill.")
@click.option("--max-upload-mb", default=20.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Largest request body.")
@click.option("--max-queued", default=64, show_default=True, type=click.IntRange(1),
              help="Requests waiting (per Serve proxy) before the server answers 503.")
@click.option("--cpus-per-replica", default=1, show_default=True, type=click.IntRange(1),
              help="CPUs (torch threads) per replica.")
@click.option("--gpus-per-replica", type=click.FloatRange(0),
              help="GPUs per replica (default: 1 when the cluster has GPUs and --device allows, else 0).")
@click.option("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option("--ray-log-level", type=click.Choice(RAY_LOG_LEVELS), default="error", show_default=True,
              help="Ray's and Ray Serve's own logging on stderr (the access log from info).")
@quiet_option
@library_errors
def serve(key_paths, search, inversion, iters, ddim_steps, exact, photometric, refine, null, alpha, generation_log,
          device, dtype, host,
          port, token_file, replicas, max_batch, batch_wait_ms, max_upload_mb, max_queued, cpus_per_replica, gpus_per_replica, address,
          ray_log_level, quiet):
    """Serve verification over HTTP (Ray Serve): POST /v1/verify, GET /v1/keys, GET /healthz.

    Runs until Ctrl-C. Needs pip install 'ringmark[scale]'.

    Example: ringmark serve --key key.json --port 8000
    """
    import signal

    from .scale.cluster import cluster_address, require_ray

    require_ray()
    from ray import serve as ray_serve

    from .scale.serve import APP, Service, start

    service = Service(host=host, port=port, token=read_token(token_file), replicas=replicas, max_batch=max_batch,
                      batch_wait_ms=batch_wait_ms, max_upload_mb=max_upload_mb, max_queued=max_queued,
                      cpus_per_replica=cpus_per_replica, gpus_per_replica=gpus_per_replica)
    from .pipeline import Decision, Recovery
    recovery = Recovery(inversion, iters, ddim_steps, exact, refine=refine, photometric=photometric)
    decision = Decision(alpha=alpha, search=search)
    keys = load_cli_keys(key_paths, quiet)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:  # from the start: a Ctrl-C while Serve deploys (the app may answer already) stops cleanly too
        with contextlib.redirect_stdout(sys.stderr):  # as in scan
            url = start(keys, recovery, decision, service, device=device, dtype=dtype, address=address,
                        log_level=ray_log_level, null=null, key_files=list(key_paths), generation_log=generation_log)
        if not quiet:
            click.echo(f"ringmark: serving {len(keys)} key{'s' * (len(keys) != 1)} at {url} (OpenAPI schema at {url}/openapi.json"
                       + ("" if service.token else "; loopback only, no token") + "); Ctrl-C stops", err=True)
        click.echo(json.dumps({"url": url}))
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        # a second Ctrl-C, or a SIGTERM from Ray's own processes as they go, must not cut the clean-up
        # short (click would print "Aborted!" and exit 1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        import ray

        if ray.is_initialized():  # else stopped before Ray started: nothing to undo
            if not cluster_address(address):  # the local Ray this command started
                ray_serve.shutdown()
            elif APP in ray_serve.status().applications:  # a shared cluster: remove only our app
                ray_serve.delete(APP)


@main.command(context_settings=CONTEXT)
@click.argument("sources", nargs=-1, required=True)
@verification_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Results file, .jsonl or .parquet; a rerun with it skips the images it holds.")
@click.option("--workers", type=click.IntRange(1),
              help="Actors holding the model (default: one per GPU, else one per --cpus-per-worker CPUs).")
@click.option("--cpus-per-worker", default=1, show_default=True, type=click.IntRange(1),
              help="CPUs (torch threads) per worker.")
@click.option("--gpus-per-worker", type=click.FloatRange(0),
              help="GPUs per worker (default: 1 when the cluster has GPUs and --device allows, else 0).")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray).")
@click.option("--force", is_flag=True, help="Start over: delete the results file first.")
@quiet_option
@library_errors
def scan(sources, key_paths, search, inversion, iters, ddim_steps, exact, photometric, refine, null, alpha,
         generation_log, device, dtype, output, workers, cpus_per_worker, gpus_per_worker, batch, address, force, quiet):
    """Verify folders or buckets of images on Ray Data, one row per image in a results file.

    SOURCES: local files and folders (recursively), or URIs pyarrow reads (s3://, gs://, ...).
    Unreadable files get a row with "error"; the scan goes on. Prints a JSON summary.
    Needs pip install 'ringmark[scale]'.

    Example: ringmark scan uploads/ --key key.json -o results.parquet --workers 2
    """
    from .scale.cluster import require_ray

    from .pipeline import Decision, Recovery
    recovery = Recovery(inversion, iters, ddim_steps, exact, refine=refine, photometric=photometric)
    decision = Decision(alpha=alpha, search=search)
    keys = load_cli_keys(key_paths, quiet)
    require_ray()
    from .scale.scan import Pool, scan as run_scan

    pool = Pool(workers=workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, batch=batch)
    log = messages(quiet, "ringmark: ")
    with contextlib.redirect_stdout(sys.stderr):  # Ray prints its workers' warnings; stdout is for the summary
        summary = run_scan(list(sources), keys, output, recovery, decision, pool=pool, device=device, dtype=dtype,
                           address=address, force=force, log=log, quiet=quiet, null=null, key_files=list(key_paths),
                           generation_log=generation_log)
    log(f"{summary.images} images scanned ({summary.skipped} skipped, already in {output}): "
        f"{summary.watermarked} watermarked at alpha = {alpha:g}, {summary.errors} errors; "
        f"{summary.images_per_second:g} images/s over {summary.seconds:.1f}s")
    click.echo(json.dumps(asdict(summary)))


@main.command(context_settings=CONTEXT)
@click.option("--model", default="tiny", show_default=True, help="'tiny', 'tiny-sd', 'tiny-flow', 'tiny-video' (bundled), a hub id or a local folder.")
@click.option("-o", "--output", type=click.Path(),
              help="Folder (e.g. the keys' folder) to write each look's null model in under the name verify looks "
                   "for, or the .npz file of a one-look recovery [default: the model folder's null/; a hub id needs -o].")
@click.option("-n", default=1024, show_default=True, type=click.IntRange(2), help="Clean images.")
@click.option("--size", type=click.IntRange(1), help="Image side in px (default: the model's).")
@click.option("--images", type=click.Path(exists=True, file_okay=False),
              help="Use the first N clean images of this folder instead of generating them.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="DDIM steps of the generated images.")
@click.option("--seed", default=10**9, show_default=True, type=click.IntRange(0), help="Seed of the first generated image.")
@click.option("--inversion", type=click.Choice(METHOD_NAMES), default=None,
              help="Decoder inversion method (default: the model's); verify must run the same.")
@click.option("--iters", type=click.IntRange(0), default=None, help="Decoder-inversion iterations (default: the model's).")
@click.option("--ddim-steps", default=None, type=click.IntRange(1), help="DDIM-inversion steps (default: the model's).")
@click.option("--exact", is_flag=True, help="Exact (fixed-point) DDIM inversion.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--force", is_flag=True, help="Replace an existing null model, or restart a stopped run.")
@device_options
@quiet_option
@library_errors
def calibrate(model, output, n, size, images, steps, seed, inversion, iters, ddim_steps, exact, batch, force, device,
              dtype, quiet):
    """Make the null models that make verify's p-value valid for every key of MODEL.

    Recovers z_T from N clean images (generated, or --images) with each look verify takes (the
    edited-image look from the same images after a clipping edit) and keeps them: the test's
    spread along each key is measured on them. Resumable: rerun the same command after a stop.

    Example: ringmark calibrate --model ./my-sd-checkpoint -o keys/ -n 1024
    """
    from .calibration import calibrate as run

    from .pipeline import Recovery
    recovery = Recovery(inversion, iters, ddim_steps, exact)  # unset: the model's, its second looks included
    progress = Progress(n, "calibrating", quiet)
    try:
        paths = run(model, output, n=n, size=size, recovery=recovery, steps=steps, seed=seed, images=images,
                    batch=batch, force=force, device=device, dtype=dtype,
                    progress=lambda done, total: progress.update(done - progress.done))
    finally:
        progress.close()
    click.echo(json.dumps({"null_models": [str(p) for p in paths], "images": n}))


@main.command(context_settings=CONTEXT)
@click.option("-o", "--outdir", type=click.Path(file_okay=False), help="Keep the key and images here.")
@click.option("--force", is_flag=True, help="Overwrite files of an earlier demo in OUTDIR.")
@quiet_option
@library_errors
def demo(outdir, force, quiet):
    """Key, 4 watermarked + 4 clean images, verify all 8, on the bundled model.

    Example: ringmark demo -o demo/
    """
    from . import api

    t0 = time.time()
    say = messages(quiet)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(outdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        key = api.keygen(root / "key.json", "tiny", force=force)
        say(f"key {key.key_id} -> {root / 'key.json'}")
        api.embed(key, root / "watermarked", n=4, seed=0, force=force)
        api.embed(key, root / "clean", n=4, seed=0, watermark=False, force=force)
        say(f"generated 4 watermarked + 4 clean images (same seeds) in {time.time() - t0:.1f}s")
        t1 = time.time()
        results = api.verify([str(root / "watermarked"), str(root / "clean")], [key])
        click.echo(table([replace(r, path=str(Path(r.path).relative_to(root))) for r in results]))
        say(f"verified 8 images in {time.time() - t1:.1f}s; total {time.time() - t0:.1f}s"
            + ("" if outdir else " (files removed; use -o DIR to keep them)"))


@main.group(context_settings=CONTEXT)
def bench():
    """Benchmarks: decoder inversion (accuracy, cost) and detection (robustness, identification)."""


def csv_ints(ctx, param, value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def csv_floats(low: float, high: float, what: str):
    """A click callback: comma-separated numbers strictly between ``low`` and ``high`` (None stays None)."""
    def parse(ctx, param, value: str | None) -> tuple[float, ...] | None:
        if value is None:
            return None
        try:
            values = tuple(float(v) for v in value.split(",") if v)
        except ValueError:
            values = ()
        if not values or not all(low < v < high for v in values):
            raise click.BadParameter(f"expected comma-separated {what}, got {value!r}")
        return values

    return parse


def csv_choices(choices):
    def parse(ctx, param, value: str) -> list[str]:
        items = [v for v in value.split(",") if v]
        bad = [v for v in items if v not in choices]
        if bad or not items:
            raise click.BadParameter(f"expected a comma-separated list of {', '.join(choices)}; got {value!r}")
        return items

    return parse


@bench.command("inversion", context_settings=CONTEXT)
@click.option("-n", "n", default=32, show_default=True, type=click.IntRange(1), help="Generated latents.")
@click.option("--iters", default="10,20,50,100,200", show_default=True, callback=csv_ints, help="Iteration counts.")
@click.option("--dtypes", default="float32,bfloat16", show_default=True, callback=csv_choices(list(DTYPE_NAMES)))
@click.option("--cost-sizes", default="512,256", show_default=True, callback=csv_ints,
              help="Sizes for the SD 2.1 VAE cost runs.")
@click.option("--cost-iters", default=3, show_default=True, type=click.IntRange(2))
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Device of the accuracy and cost runs.")
@click.option("--skip-accuracy", is_flag=True)
@click.option("--skip-cost", is_flag=True)
@click.option("--skip-reference", is_flag=True, help="Skip the side-by-side with the seed paper's code.")
@click.option("--quick", is_flag=True, help="4 latents, 2 iteration counts, 64 px cost runs: checks the code.")
@click.option("--video", is_flag=True, help="Instead: memory and time per iteration against the number of frames on "
              "a video VAE (Wan 2.1's architecture, random weights), gradient-free against gradient.")
@click.option("--frames", default="1,5,9,17", show_default=True, callback=csv_ints,
              help="With --video: clip lengths (Wan's VAE takes 1 + 4k frames).")
@click.option("--video-sizes", default="64", show_default=True, callback=csv_ints,
              help="With --video: frame sides (px); two or more separate what grows with pixels (the 480x832 estimate).")
@click.option("--accuracy-frames", default=16, show_default=True, type=click.IntRange(0),
              help="With --video: also the time to the gradient method's NMSE on a clip of this many frames, with "
                   "tiny's trained VAE frame by frame (0: skip).")
@click.option("-o", "--outdir", default="docs/bench", show_default=True, type=click.Path(file_okay=False))
@quiet_option
@library_errors
def bench_inversion(n, iters, dtypes, cost_sizes, cost_iters, device, skip_accuracy, skip_cost, skip_reference, quick,
                    video, frames, video_sizes, accuracy_frames, outdir, quiet):
    """NMSE vs iterations and time (bundled model), cost per iteration and memory (SD 2.1 VAE);
    with --video, cost against clip length on a video VAE (Wan 2.1's; --skip-cost: not run) and
    with tiny's VAE frame by frame, and the time to the gradient method's NMSE on a clip.

    Example: ringmark bench inversion -n 32 -o docs/bench
    """
    from .bench import inversion

    given = click.get_current_context().get_parameter_source("dtypes").name != "DEFAULT"
    log = messages(quiet)
    if video:
        from .bench import video_inversion

        bad = [f for f in frames if f < 1 or (f - 1) % 4]
        if bad:
            raise click.BadParameter(f"Wan's VAE takes 1 + 4k frames; got {bad}", param_hint="--frames")
        if any(size < 16 or size % 16 for size in video_sizes):
            raise click.BadParameter(f"sides must be multiples of 16, got {video_sizes}", param_hint="--video-sizes")
        click.echo(video_inversion.main(frames, video_sizes, cost_iters, device, dtypes[0], quick, Path(outdir), log,
                                        accuracy_frames, skip_cost))
        return
    click.echo(inversion.main(n=n, iters=iters, dtypes=dtypes, cost_sizes=cost_sizes, cost_iters=cost_iters,
                              device=device, skip_accuracy=skip_accuracy, skip_cost=skip_cost, quick=quick,
                              outdir=Path(outdir), log=log, dtypes_given=given, skip_reference=skip_reference))


@bench.command("detect", context_settings=CONTEXT)
@click.option("-n", "n", default=100, show_default=True, type=click.IntRange(2), help="Images per class.")
@click.option("--keys", "n_keys", default=2048, show_default=True, type=click.IntRange(2),
              help="Keys in the keyring for identification (image i carries key i).")
@click.option("--pattern-n", default=48, show_default=True, type=click.IntRange(0),
              help="Watermarked images per pattern in the pattern comparison (0: skip it).")
@click.option("--sweep-n", default=24, show_default=True, type=click.IntRange(0),
              help="Images per class in the decoder iterations x DDIM steps sweep (0: skip it).")
@click.option("--sweep-iters", default="0,2,5,10", show_default=True, callback=csv_ints,
              help="Forward-step iterations, taken along one run per image.")
@click.option("--sweep-steps", default="1,2,5,10,20,50", show_default=True, callback=csv_ints,
              help="DDIM-inversion steps.")
@click.option("--search", type=click.Choice(SEARCHES), default=DEFAULT_SEARCH, show_default=True)
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1),
              help="Images per inversion batch (verify's default; larger suits a GPU).")
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--seed", default=20241127, show_default=True, type=int, help="Seed of the keys and the attacks.")
@click.option("--first-image", default=0, show_default=True, type=click.IntRange(0),
              help="Image i is generated from seed FIRST+i. The edited-image rule and the weak band were "
              "chosen on seeds 0-99: start elsewhere for held-out numbers.")
@click.option("--verify-n", default=32, show_default=True, type=click.IntRange(0),
              help="Images in the timing of api.verify, today's defaults against the previous ones (0: skip it).")
@click.option("--attacks", default=",".join(ATTACKS[1:]), show_default=True, callback=csv_choices(ATTACKS[1:]),
              help="Which of Tree-Ring's six attacks to measure (the unattacked images always are).")
@click.option("--study", is_flag=True, help="The decision study instead: each --recoveries method on the same "
              "images (ringmark's test, 2,048-key identification, the paper's 3 ring keys, paired tests).")
@click.option("--model", "model_name", default="tiny", show_default=True,
              help="--study: the model (name, hub id, folder); --video: a video model [default: tiny-video].")
@click.option("--recoveries", default=None, help="--study: 'encoder' and METHOD:ITERS, comma-separated "
              "[default: the encoder, then fixed_point, inertial_km, adam and gradient at 10, 20 and 50]; "
              "--video: one of them [default: the model's].")
@click.option("--video", is_flag=True, help="Clip-level detection instead, on a video model (--model, default "
              "tiny-video): N watermarked and N clean clips, each written as MP4 after each --video-attacks edit and "
              "tested by verify.")
@click.option("--video-attacks", default=",".join(VIDEO_ATTACKS), show_default=True, callback=csv_choices(VIDEO_ATTACKS),
              help="--video: the edits.")
@click.option("--frames", type=click.IntRange(1), help="--video: frames per clip [default: the model's].")
@click.option("--gen-steps", default=50, show_default=True, type=click.IntRange(1), help="--video: generation steps.")
@click.option("--quick", is_flag=True, help="4 images per class, 16 keys, 5 steps, a tiny sweep: checks the code.")
@click.option("-o", "--outdir", default="docs/bench", show_default=True, type=click.Path(file_okay=False))
@quiet_option
@library_errors
def bench_detect(n, n_keys, pattern_n, sweep_n, sweep_iters, sweep_steps, search, batch, device, seed, first_image,
                 verify_n, attacks, study, model_name, recoveries, video, video_attacks, frames, gen_steps, quick, outdir,
                 quiet):
    """Robustness (AUC, TPR@1%FPR) under Tree-Ring's attacks, identification among many keys, key
    patterns, the geometric search, and verify time vs TPR over DDIM steps x decoder iterations;
    with --study, which decoder inversion pays, method against method on one model.

    Example: ringmark bench detect -n 100 --keys 2048 -o docs/bench
    Example: ringmark bench detect --study --model tiny-sd -n 100 -o docs/bench/study/tiny-sd
    Example: ringmark bench detect --video -n 100 -o docs/bench/video
    """
    log = messages(quiet)
    if video:
        from .bench import video_detect
        from .bench.study import parse_recovery
        from .pipeline import Recovery

        if study:
            raise click.UsageError("--video and --study are separate benchmarks")
        from .models import makes_video

        model_name = "tiny-video" if model_name == "tiny" else model_name
        if not makes_video(model_name):
            raise click.UsageError(f"--video needs a video model; {model_name!r} makes images")
        recovery = Recovery(*parse_recovery(recoveries)) if recoveries else Recovery()  # the encoder's 0 iters are allowed
        click.echo(video_detect.main(model_name, 4 if quick else n, frames,
                                     None, 2 if quick else gen_steps, video_attacks, recovery, Path(outdir),
                                     shlex.join(["ringmark", *sys.argv[1:]]), device=device, log=log))
        return
    if not study and (model_name != "tiny" or recoveries is not None):
        raise click.UsageError("--model and --recoveries are options of --study")
    if study and set(attacks) != set(ATTACKS[1:]):
        raise click.UsageError("--study measures all six attacks; --attacks is not one of its options")
    if study:
        from .bench import study as decision_study

        listed = recoveries and [r.strip() for r in recoveries.split(",")]
        click.echo(decision_study.main(model_name=model_name, n=n, n_keys=n_keys, recoveries=listed, search=search,
                                       batch=batch, device=device, quick=quick, outdir=Path(outdir), log=log))
        return
    from .bench import detect

    click.echo(detect.main(n=n, n_keys=n_keys, pattern_n=pattern_n, sweep_n=sweep_n, sweep_iters=sweep_iters,
                           sweep_steps=sweep_steps, search=search, batch=batch, device=device, quick=quick,
                           outdir=Path(outdir), log=log, seed=seed, first_image=first_image, verify_n=verify_n,
                           attacks=("none", *attacks)))


@bench.command("null", context_settings=CONTEXT)
@click.option("--model", "model_name", default="tiny", show_default=True, help="A model (bundled, or a path).")
@click.option("-n", "n", default=2048, show_default=True, type=click.IntRange(2), help="Clean generated images.")
@click.option("--keys", "n_keys", default=50, show_default=True, type=click.IntRange(1), help="Keys per pattern.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1), help="Generation steps.")
@click.option("--photos", default=512, show_default=True, type=click.IntRange(0),
              help="Photograph crops (needs the train extra; 0: none).")
@click.option("--quick", is_flag=True, help="8 images, 1 key per pattern: checks the code.")
@click.option("-o", "--outdir", default="docs/bench/null", show_default=True, type=click.Path(file_okay=False))
@quiet_option
@library_errors
def bench_null(model_name, n, n_keys, steps, photos, quick, outdir, quiet):
    """Each key's false-positive rate under verify's rule, with the null models and without.

    Clean generated images (as they are, after JPEG and blur) and photographs, each tested
    against each key alone by the same detect verify runs (its looks, search and correction).

    Example: ringmark bench null --model tiny -n 2048 --keys 50
    """
    from .bench import null

    if quick:
        n, n_keys, steps, photos = 8, 1, 2, 4
    null.run(model_name, n=n, n_keys=n_keys, steps=steps, photos=photos, outdir=outdir, log=messages(quiet))


@bench.command("security", context_settings=CONTEXT)
@click.option("--model", "model_name", default="tiny-sd", show_default=True, help="The public model (bundled).")
@click.option("-n", "n", default=100, show_default=True, type=click.IntRange(2), help="Images per set.")
@click.option("--budgets", default="10,100,1000", show_default=True, help="Averaging: watermarked images M.")
@click.option("--imprint-n", default=16, show_default=True, type=click.IntRange(1), help="Imprinted covers per set.")
@click.option("--imprint-steps", default=150, show_default=True, type=click.IntRange(1), help="Adam steps.")
@click.option("--fresh-keys", default=2048, show_default=True, type=click.IntRange(1),
              help="Averaging defence: the keyring each image draws a fresh key from.")
@click.option("--adaptive-n", default=16, show_default=True, type=click.IntRange(0),
              help="Covers of the adaptive forger (0: skip the provenance part, verify --log).")
@click.option("--adaptive-steps", default=50, show_default=True, type=click.IntRange(1),
              help="The adaptive forger's Adam steps.")
@click.option("--adaptive-psnr", default=None, callback=csv_floats(0, 100, "PSNRs in dB (0-100)"),
              help="The adaptive forger's PSNR floors in dB, comma-separated [default: 30,25,20,15].")
@click.option("--strengths", default="0.1,0.2,0.3,0.4,0.5", show_default=True,
              callback=csv_floats(0, 1, "numbers between 0 and 1"),
              help="Regeneration: the noise levels re-diffused (shares of the schedule).")
@click.option("--provenance-only", is_flag=True,
              help="Only the provenance part (verify --log) and the forgeries it judges; to <model>-provenance.json.")
@click.option("--quick", is_flag=True, help="A few images and steps: checks the code.")
@click.option("-o", "--outdir", default="docs/bench/security", show_default=True, type=click.Path(file_okay=False))
@quiet_option
@library_errors
def bench_security(model_name, n, budgets, imprint_n, imprint_steps, fresh_keys, adaptive_n, adaptive_steps,
                   adaptive_psnr, strengths, provenance_only, quick, outdir, quiet):
    """Forgery and removal by averaging, imprinting and regeneration, and the defences' cost.

    Example: ringmark bench security --model tiny-sd -n 100
    """
    from .bench import security

    budgets = tuple(int(b) for b in budgets.split(","))
    if min(strengths) < 0.1:  # regeneration runs security.run's 10 DDIM steps
        raise click.BadParameter("each must be at least 0.1 (one of the 10 DDIM steps)", param_hint="'--strengths'")
    if quick:
        n, budgets, imprint_n, imprint_steps, fresh_keys, adaptive_n, adaptive_steps = 4, (2,), 1, 2, 8, 1, 2
    security.run(model_name, n=n, budgets=budgets, imprint_n=imprint_n, imprint_steps=imprint_steps,
                 strengths=(0.3,) if quick else strengths, many_keys=2 if quick else 8,
                 fresh_keys=fresh_keys, adaptive_n=adaptive_n, adaptive_steps=adaptive_steps, outdir=outdir,
                 provenance_only=provenance_only, adaptive_psnr=adaptive_psnr, log=messages(quiet))


@bench.command("scale", context_settings=CONTEXT)
@click.option("-n", "n", default=100, show_default=True, type=click.IntRange(2), help="Images in the scanned folder.")
@click.option("--clients", default=16, show_default=True, type=click.IntRange(1), help="Concurrent HTTP clients.")
@click.option("--requests", default=96, show_default=True, type=click.IntRange(1), help="Requests per serve run.")
@click.option("--steps", default=20, show_default=True, type=click.IntRange(1), help="Generation steps of the images.")
@click.option("--skip-scan", is_flag=True)
@click.option("--skip-serve", is_flag=True)
@click.option("--quick", is_flag=True, help="8 images, 16 requests: checks the code.")
@click.option("-o", "--outdir", default="docs/bench", show_default=True, type=click.Path(file_okay=False))
@quiet_option
@library_errors
def bench_scale(n, clients, requests, steps, skip_scan, skip_serve, quick, outdir, quiet):
    """scan (1 and 2 workers) against verify, and serve with and without batching (needs the scale extra).

    Example: ringmark bench scale -n 100 --clients 16 -o docs/bench
    """
    from .bench import scale

    if quick:
        n, requests, steps = 8, 16, 5
    log = messages(quiet)
    click.echo(scale.main(n=n, clients=clients, requests=requests, steps=steps, outdir=Path(outdir), log=log,
                          skip_scan=skip_scan, skip_serve=skip_serve))


@main.group("log", context_settings=CONTEXT)
def log_group():
    """The generation log: what embed --log recorded (list, export, import, rebuild).

    LOG is a SQLite file or a database URL (postgresql://user@host/db).
    """


log_argument = click.argument("log", envvar="RINGMARK_LOG", metavar="LOG")


@log_group.command("list", context_settings=CONTEXT)
@log_argument
@click.option("--key-id", help="Only the images logged under this key id.")
@click.option("--limit", type=click.IntRange(1), help="At most this many rows.")
@library_errors
def log_list(log, key_id, limit):
    """One JSON line per logged image (the fingerprint left out), oldest first.

    Example: ringmark log list generations.sqlite --key-id 3f2a...
    """
    from .io.genlog import GenerationLog

    for g in GenerationLog.open(log, create=False).rows(key_id=key_id, limit=limit):
        row = g.record()
        row.pop("fingerprint")
        click.echo(json.dumps(row))


@log_group.command("export", context_settings=CONTEXT)
@log_argument
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@library_errors
def log_export(log, output, force):
    """Write every row to OUTPUT (.jsonl or .parquet).

    Example: ringmark log export generations.sqlite log.parquet
    """
    from .io.genlog import GenerationLog

    n = GenerationLog.open(log, create=False).export(output, force=force)
    click.echo(json.dumps({"exported": n, "output": output}))


@log_group.command("import", context_settings=CONTEXT)
@log_argument
@click.argument("input_file", metavar="INPUT", type=click.Path(dir_okay=False))
@library_errors
def log_import(log, input_file):
    """Add the rows of INPUT (.jsonl or .parquet, as export writes); rows logged already are skipped.

    Example: ringmark log import postgresql://ringmark@db/provenance log.parquet
    """
    from .io.genlog import GenerationLog

    n = GenerationLog.open(log).import_(input_file)
    click.echo(json.dumps({"imported": n, "input": input_file}))


@log_group.command("rebuild", context_settings=CONTEXT)
@log_argument
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@library_errors
def log_rebuild(log, folder):
    """Log the images of an embed output FOLDER (its manifest.jsonl and PNGs), fingerprints made
    anew; images logged already (same image id) are skipped.

    Example: ringmark log rebuild generations.sqlite out/
    """
    from . import api

    added, skipped = api.rebuild_log(log, folder)
    click.echo(json.dumps({"logged": added, "skipped": skipped, "folder": folder}))



@main.group("c2pa", context_settings=CONTEXT)
def c2pa_group():
    """Content Credentials (C2PA): read an image's or a recovered manifest; make a test chain.

    embed --c2pa signs them in; verify reads them (docs/how-to/credentials.md).
    """


@c2pa_group.command("show", context_settings=CONTEXT)
@click.argument("files", nargs=-1, required=True, type=click.Path())
def c2pa_show(files):
    """The Content Credentials of images, or of .c2pa manifest stores (verify --credentials-out), in
    FILES or folders of them, as
    JSON lines: status (valid, trusted, invalid, absent), why, generator, signer, the watermark key id
    and the generation-log image id they name. A .c2pa store is checked without its image: its
    signature and assertions, not its hard binding.

    Exit status: 0 if every file's credentials hold, 1 if any are absent or invalid, 2 if a file
    cannot be read.

    Example: ringmark c2pa show out/00000.png recovered/
    """
    from PIL import Image, UnidentifiedImageError

    from .io import credentials

    from .io.images import IMAGE_SUFFIXES

    code = 0
    for f in [str(g) for f in files for g in (sorted(p for p in Path(f).iterdir() if p.suffix.lower() in
                                                     IMAGE_SUFFIXES | {".c2pa"}) if Path(f).is_dir() else [f])]:
        try:
            data = Path(f).read_bytes()
            if f.endswith(".c2pa"):
                c = credentials.read_store(data)
            else:
                with Image.open(f) as im:
                    fmt = im.format
                c = credentials.read(data, fmt)
        except (OSError, UnidentifiedImageError) as e:
            click.echo(f"ringmark: error: {f}: {getattr(e, 'strerror', None) or 'not an image or .c2pa file'}", err=True)
            code = 2
            continue
        except credentials.CredentialsError as e:
            raise Failure(str(e)) from None
        click.echo(json.dumps({"path": f, **asdict(c)}))
        if c.status not in ("valid", "trusted"):
            code = max(code, 1)
    sys.exit(code)


@c2pa_group.command("test-chain", context_settings=CONTEXT)
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing chain.pem / signer.key.")
@library_errors
def c2pa_test_chain(outdir, force):
    """An UNTRUSTED certificate chain to try embed --c2pa: OUTDIR/chain.pem and OUTDIR/signer.key
    (owner-only). Validators show its manifests as valid but untrusted; sign real images with a
    certificate from a CA on the C2PA trust list.

    Example: ringmark c2pa test-chain -o creds/ && ringmark embed --key key.json -o out/ --c2pa
    --c2pa-cert creds/chain.pem --c2pa-key creds/signer.key
    """
    from .io.credentials import test_chain

    cert, key = test_chain(outdir, force=force)
    click.echo(f"wrote {cert} and {key} (a test chain: UNTRUSTED)", err=True)
