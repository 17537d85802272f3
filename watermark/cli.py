"""The ``ringmark`` command line: a thin layer over ``watermark.api``.

stdout carries data only (tables, JSON lines); messages and progress bars go to stderr.
"""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import click

from . import __version__

CONTEXT = {"help_option_names": ["-h", "--help"]}


class Failure(click.ClickException):
    """A one-line error on stderr and exit status 2 (usage errors and unusable input)."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"ringmark: error: {self.format_message()}", err=True)


def return_code(results) -> int:
    """The exit status of ``verify``.

    2 if any input could not be processed (its result carries the error), else 0 if at
    least one image was found watermarked, else 1. Usage errors also exit with 2.
    """
    if any(r.error is not None for r in results):
        return 2
    return 0 if any(r.watermarked for r in results) else 1


def library_errors(fn):
    """Map the library's exceptions to one-line CLI errors (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .api import OutputError
        from .keys import KeyFileError
        from .model import ModelError

        try:
            return fn(*args, **kwargs)
        except (KeyFileError, ModelError, OutputError, ValueError) as e:
            raise Failure(str(e)) from None

    return wrapper


def device_options(fn):
    fn = click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default="float32",
                      show_default=True, help="Precision of the networks (float16 needs CUDA).")(fn)
    fn = click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                      help="auto: CUDA when present, else CPU.")(fn)
    return fn


def quiet_option(fn):
    return click.option("-q", "--quiet", is_flag=True, help="No messages or progress bars on stderr.")(fn)


def _device(device: str) -> str:
    from .model import resolve_device

    return resolve_device(device).type


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="ringmark")
def main():
    """Watermark images of latent diffusion models in their initial noise, and verify them.

    \b
    ringmark demo                       # the whole loop on the bundled model
    ringmark keygen -o key.json
    ringmark embed --key key.json -o out/ -n 8
    ringmark verify out/ --key key.json --json
    """


@main.command(context_settings=CONTEXT)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Key file to write (0600).")
@click.option("--model", default="tiny", show_default=True, help="'tiny' (bundled), a hub id or a local folder.")
@click.option("--size", type=int, help="Image side in px (default: the model's).")
@click.option("--pattern", type=click.Choice(["ring", "rand", "zeros"]), default="ring", show_default=True)
@click.option("--radius", type=int, help="Mask radius in latent bins (default: Tree-Ring's 10/64 of the side).")
@click.option("--channel", type=int, help="Latent channel (default: the last).")
@click.option("--seed", type=int, help="Secret seed (default: 128 random bits).")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
@quiet_option
@library_errors
def keygen(output, model, size, pattern, radius, channel, seed, force, quiet):
    """Make a new secret key.

    Example: ringmark keygen -o key.json --model tiny --size 128
    """
    from . import api

    key = api.keygen(output, model, size, pattern, radius, channel, seed, force)
    if not quiet:
        click.echo(f"wrote {output} (key id {key.key_id}, {pattern}, radius {key.radius}, channel {key.channel}, "
                   f"latent {list(key.latent_shape)})", err=True)
    click.echo(json.dumps({"key": output, "key_id": key.key_id}))


def _progress(total: int, quiet: bool, label: str):
    if quiet or total <= 3:
        return None, lambda k: None
    bar = click.progressbar(length=total, label=label, file=sys.stderr)
    return bar, bar.update


@main.command(context_settings=CONTEXT)
@click.option("--key", "key_path", required=True, type=click.Path(dir_okay=False), help="Key file.")
@click.option("-o", "--outdir", required=True, type=click.Path(file_okay=False), help="Folder for PNGs + manifest.")
@click.option("-n", default=4, show_default=True, type=click.IntRange(1), help="Number of images.")
@click.option("--prompt", help="Prompt (text-conditioned models).")
@click.option("--prompts", "prompts_file", type=click.File(), help="File of prompts, one per line, used in turn.")
@click.option("--seed", default=0, show_default=True, help="Seed of the first image; the next get seed+1, ...")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(1), help="DDIM steps.")
@click.option("--guidance", type=float, help="Classifier-free guidance (default 7.5 for text models, else 1).")
@click.option("--no-watermark", is_flag=True, help="Clean controls: same model and seeds, no key.")
@click.option("--force", is_flag=True, help="Overwrite existing images/manifest in OUTDIR.")
@device_options
@quiet_option
@library_errors
def embed(key_path, outdir, n, prompt, prompts_file, seed, steps, guidance, no_watermark, force, device, dtype,
          quiet):
    """Generate watermarked images (the model is the key's).

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
    t0 = time.time()
    bar, update = _progress(n, quiet, "embedding")
    try:
        records = api.embed(key_path, outdir, n, prompts, seed, steps, guidance, not no_watermark, force,
                            _device(device), dtype, progress=update)
    finally:
        if bar is not None:
            bar.render_finish()
    for r in records:
        click.echo(json.dumps(asdict(r)))
    if not quiet:
        kind = "clean" if no_watermark else "watermarked"
        click.echo(f"wrote {len(records)} {kind} images and manifest.jsonl to {outdir} in {time.time() - t0:.1f}s",
                   err=True)


def _table(results) -> str:
    rows = [("path", "verdict", "p_value", "key_id", "distance", "note")]
    for r in results:
        if r.error is not None:
            rows.append((r.path, "ERROR", "-", "-", "-", r.error))
        else:
            rows.append((r.path, "WATERMARKED" if r.watermarked else "clean", f"{r.p_value:.3g}", r.key_id,
                         f"{r.distance:.3f}", r.note or ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[5] for row in rows)


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, required=True)
@click.option("--key", "key_paths", required=True, multiple=True, type=click.Path(dir_okay=False),
              help="Key file; repeat to test several keys (the p-value is Šidák-corrected).")
@click.option("--inversion", type=click.Choice(["encoder", "gradient", "fixed_point", "inertial_km", "adam"]),
              default=None, help="Decoder inversion method.  [default: fixed_point]")
@click.option("--iters", type=click.IntRange(0), default=None, help="Decoder-inversion iterations.  [default: 10]")
@click.option("--ddim-steps", default=50, show_default=True, type=click.IntRange(1))
@click.option("--exact", is_flag=True, help="Exact (fixed-point) DDIM inversion; 4x the UNet evaluations.")
@click.option("--alpha", default=0.01, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Decision level: watermarked when p <= alpha.")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1), help="Images per batch.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image per line.")
@device_options
@quiet_option
def verify(paths, key_paths, inversion, iters, ddim_steps, exact, alpha, batch, as_json, device, dtype, quiet):
    """Test images (files or folders, recursively) for the watermark of one or more keys.

    Exit status: 0 if at least one image is watermarked, 1 if none is, 2 if any input could
    not be processed (or on a usage error).

    Example: ringmark verify suspect/ --key key.json --json > results.jsonl
    """
    results = _verify(paths, key_paths, inversion, iters, ddim_steps, exact, alpha, batch, device, dtype, quiet)
    if as_json:
        for r in results:
            click.echo(json.dumps(asdict(r)))
    else:
        click.echo(_table(results))
    sys.exit(return_code(results))


@library_errors
def _verify(paths, key_paths, inversion, iters, ddim_steps, exact, alpha, batch, device, dtype, quiet):
    from . import api
    from .images import find_images
    from .keys import load_key
    from .verify import DEFAULT_INVERSION, DEFAULT_ITERS, Recovery

    keys = [load_key(p) for p in key_paths]
    recovery = Recovery(inversion or DEFAULT_INVERSION, DEFAULT_ITERS if iters is None else iters, ddim_steps, exact)
    total = len(find_images(list(paths)))
    bar, update = _progress(total, quiet, "verifying")
    try:
        return api.verify(list(paths), keys, recovery, alpha, _device(device), dtype, batch, progress=update)
    finally:
        if bar is not None:
            bar.render_finish()


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
    from .verify import Recovery

    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(outdir or tmp)
        root.mkdir(parents=True, exist_ok=True)
        key = api.keygen(root / "key.json", "tiny", force=force)
        say = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
        say(f"key {key.key_id} -> {root / 'key.json'}")
        api.embed(key, root / "watermarked", n=4, seed=0, force=force)
        api.embed(key, root / "clean", n=4, seed=0, watermark=False, force=force)
        say(f"generated 4 watermarked + 4 clean images (same seeds) in {time.time() - t0:.1f}s")
        t1 = time.time()
        results = api.verify([str(root / "watermarked"), str(root / "clean")], [key], Recovery())
        shown = [type(r)(**{**asdict(r), "path": str(Path(r.path).relative_to(root))}) for r in results]
        click.echo(_table(shown))
        say(f"verified 8 images in {time.time() - t1:.1f}s; total {time.time() - t0:.1f}s"
            + ("" if outdir else " (files removed; use -o DIR to keep them)"))


@main.group(context_settings=CONTEXT)
def bench():
    """Benchmarks: decoder inversion (accuracy, cost) and detection (robustness, identification)."""


def _bench_device(device: str) -> str:
    """The benchmarks' device; on CUDA, float32 is reported as float32: no TF32 in cuDNN
    convolutions or matmuls."""
    dev = _device(device)
    if dev == "cuda":
        import torch

        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return dev


def _csv_ints(value: str) -> list[int]:
    try:
        return [int(v) for v in value.split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from None


@bench.command("inversion", context_settings=CONTEXT)
@click.option("-n", "n", default=32, show_default=True, type=click.IntRange(1), help="Generated latents.")
@click.option("--iters", default="10,20,50,100,200", show_default=True, help="Iteration counts.")
@click.option("--dtypes", default="float32,bfloat16", show_default=True)
@click.option("--cost-sizes", default="512,256", show_default=True, help="Sizes for the SD 2.1 VAE cost runs.")
@click.option("--cost-iters", default=3, show_default=True, type=click.IntRange(2))
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Device of the accuracy and cost runs.")
@click.option("--skip-accuracy", is_flag=True)
@click.option("--skip-cost", is_flag=True)
@click.option("--quick", is_flag=True, help="4 latents, 2 iteration counts, 64 px cost runs: checks the code.")
@click.option("-o", "--outdir", default="docs/bench", show_default=True, type=click.Path(file_okay=False))
@quiet_option
def bench_inversion(n, iters, dtypes, cost_sizes, cost_iters, device, skip_accuracy, skip_cost, quick, outdir,
                    quiet):
    """NMSE vs iterations and time (bundled model), cost per iteration and memory (SD 2.1 VAE).

    Example: ringmark bench inversion -n 32 -o docs/bench
    """
    from . import bench_inversion as bi
    from .bench_report import machine

    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    iters, sizes, dtypes = _csv_ints(iters), _csv_ints(cost_sizes), [d for d in dtypes.split(",") if d]
    config = dict(bi.SD21_VAE)
    if quick:
        n, iters, sizes, cost_iters, dtypes = 4, [2, 5], [64], 2, dtypes[:1]
    dev = _bench_device(device)
    if dev == "cuda":
        if click.get_current_context().get_parameter_source("dtypes").name == "DEFAULT":
            dtypes = dtypes + ["float16"]  # the GPU's half precision, unless --dtypes was given
    elif "float16" in dtypes:
        raise click.BadParameter("float16 needs a CUDA device (CPU: float32, bfloat16)", param_hint="--dtypes")
    res = {"command": "ringmark bench inversion " + " ".join(sys.argv[3:]), "machine": machine(dev),
           "date": time.strftime("%Y-%m-%d"), "n": n, "accuracy": [], "cost": []}
    out = Path(outdir)
    if not skip_accuracy:
        res["accuracy"] = bi.accuracy(n, iters, dtypes, 10 if quick else 50, 20241127, log, dev,
                                      checkpoint=lambda rows: bi.write_partial({**res, "accuracy": rows}, out))
    if not skip_cost:
        res["cost"] = bi.cost(sizes, cost_iters, dev, dtypes, config, log,
                              checkpoint=lambda rows: bi.write_partial({**res, "cost": rows}, out))
    for f in bi.write(res, out):
        log(f"wrote {f}")
    click.echo(bi.markdown(res))


@bench.command("detect", context_settings=CONTEXT)
@click.option("-n", "n", default=100, show_default=True, type=click.IntRange(2), help="Images per class.")
@click.option("--methods", default="encoder,gradient,fixed_point,adam", show_default=True)
@click.option("--sweep", default="5,10,20,50,100", show_default=True,
              help="Iteration counts of the forward step (fixed_point), taken along one run per image.")
@click.option("--gradient-iters", default=20, show_default=True, type=click.IntRange(1))
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1),
              help="Images per inversion batch (verify's default; larger suits a GPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--quick", is_flag=True, help="4 images per class, 5 steps, a short sweep: checks the code.")
@click.option("-o", "--outdir", default="docs/bench", show_default=True, type=click.Path(file_okay=False))
@quiet_option
def bench_detect(n, methods, sweep, gradient_iters, batch, device, quick, outdir, quiet):
    """AUC and TPR@1%FPR under Tree-Ring's attacks, 3-key identification, verify time.

    Example: ringmark bench detect -n 100 -o docs/bench
    """
    from . import bench_detect as bd

    log = (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))
    steps = 50
    if quick:
        n, steps, sweep, gradient_iters = 4, 5, "1,2", 2
    command = "ringmark bench detect " + " ".join(sys.argv[3:])
    dev = _bench_device(device)
    res = bd.run(n, [m for m in methods.split(",") if m], sweep=_csv_ints(sweep), gen_steps=steps, ddim_steps=steps,
                 gradient_iters=gradient_iters, log=log, device=dev, batch=batch,
                 checkpoint=lambda partial: bd.write_partial({**partial, "command": command}, Path(outdir)))
    res["command"] = command
    for f in bd.write(res, Path(outdir)):
        log(f"wrote {f}")
    click.echo(bd.markdown(res))
