"""``ringmark scan``: verify folders or buckets of images on Ray Data.

Ray Data reads the files (local folders, or any URI its pyarrow filesystems take, with the
user's credentials), an actor pool verifies them (each actor loads the model once and calls
``Verifier``, as ``verify`` does; one actor per GPU where there are GPUs), and the driver appends
the rows to the results file as they come. A rerun with the same results file skips the images it
already holds.

    summary = scan(["suspect/"], ["key.json"], "results.jsonl", pool=Pool(workers=2))
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..io.images import IMAGE_SUFFIXES, ImageError, decode_image, find_images, require_usable
from ..io.keyring import load_keys
from ..io.genlog import located
from ..io.nullfile import resolve_nulls
from ..io.results import ResultsFile, arrow_schema
from ..models import default_recovery
from ..pipeline import Decision, Recovery, check_key_set, null_label
from ..verifier import Verifier, failure
from .cluster import connect, default_gpus

MAX_BLOCKS = 20_000  # read tasks: one per batch up to this many


@dataclass
class ScanSummary:
    output: str
    images: int  # verified by this run, errors included
    skipped: int  # already in the results file
    watermarked: int  # of this run's images
    errors: int  # of this run's images
    seconds: float  # wall time of this run, Ray's start included
    images_per_second: float
    workers: int
    first_result_seconds: float | None  # until the first verified batch: Ray's start, the actors' model loads
    steady_images_per_second: float | None  # over the last 80 % of the images: the pool's throughput


@dataclass(frozen=True)
class Pool:
    """The actor pool: ``workers`` actors (default: one per GPU when the cluster has GPUs and the
    device allows, else one per ``cpus_per_worker`` CPUs), each running torch on ``cpus_per_worker``
    threads and verifying ``batch`` images at a time."""

    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float | None = None
    batch: int = 8

    def __post_init__(self):
        for name in ("workers", "cpus_per_worker", "batch"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ValueError(f"gpus_per_worker must be non-negative, got {self.gpus_per_worker}")


class ScanWorker:
    """One actor of the pool: the model loaded once, then batches of files -> rows."""

    def __init__(self, keys, recovery: Recovery, decision: Decision, *, device: str, dtype: str, threads: int,
                 null="none", generation_log: str | None = None):
        import torch

        torch.set_num_threads(threads)
        self.verifier = Verifier(keys, recovery, decision, device=device, dtype=dtype, null=null, log=generation_log)

    def __call__(self, batch: dict):
        import pyarrow as pa

        rows, items = {}, []
        for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
            try:
                items.append((i, str(path), decode_image(bytes(data), self.verifier.size)))
            except ImageError as e:
                rows[i] = self.verifier.failed(str(path), str(e))
            except Exception as e:  # any other failure is this file's row too: the scan goes on
                rows[i] = self.verifier.failed(str(path), f"cannot read ({type(e).__name__}: {e})")
        if items:
            try:
                verified = self.verifier.run([(p, loaded) for _, p, loaded in items])
            except Exception as e:  # the batch failed as a whole: each of its images gets the error
                verified = [self.verifier.failed(p, f"verification failed ({type(e).__name__}: {e})")
                            for _, p, _ in items]
            for (i, _, _), row in zip(items, verified):
                rows[i] = row
        return pa.Table.from_pylist([asdict(rows[i]) for i in range(len(rows))], schema=arrow_schema())


def steady_rate(arrivals: list[tuple[float, int]], skip: float = 0.2) -> float | None:
    """Images per second after the first ``skip`` of them arrived (the pool warmed up), from
    (seconds, images so far) pairs; None when too few batches arrived to tell."""
    if not arrivals:
        return None
    start = next((a for a in arrivals if a[1] >= skip * arrivals[-1][1]), None)
    end = arrivals[-1]
    return (end[1] - start[1]) / (end[0] - start[0]) if start is not None and end[0] > start[0] else None


def list_images(sources: list[str]) -> list[tuple[str, str, str | None]]:
    """(path shown in the results, path Ray reads, error or None) for every image under ``sources``:
    local files and folders (recursively, as ``verify``), or URIs (``s3://bucket/prefix``)."""
    out = []
    for source in sources:
        if "://" not in source:
            for path, error in find_images([source]):
                if error is None and not os.access(path, os.R_OK):
                    error = "no such file (broken link)" if not os.path.exists(path) else "permission denied"
                out.append((path, os.path.abspath(path), error))
            continue
        import pyarrow.fs

        try:
            fs, root = pyarrow.fs.FileSystem.from_uri(source)
            info = fs.get_file_info(root)
            if info.type == pyarrow.fs.FileType.Directory:
                infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
            else:
                infos = [info]
        except (OSError, ValueError) as e:
            out.append((source, source, f"cannot list ({str(e).splitlines()[0]})"))
            continue
        scheme = source.split("://", 1)[0]
        files = sorted(f"{scheme}://{i.path}" for i in infos if i.type == pyarrow.fs.FileType.File
                       and Path(i.path).suffix.lower() in IMAGE_SUFFIXES)
        if info.type == pyarrow.fs.FileType.NotFound:
            out.append((source, source, "no such file or folder"))
        elif not files:
            out.append((source, source, "folder holds no images"))
        out.extend((f, f, None) for f in files)
    return out


def scan(sources: list[str], key_sources: list, output: str | os.PathLike, recovery: Recovery = Recovery(),
         decision: Decision = Decision(), pool: Pool = Pool(), *, device: str = "auto", dtype: str = "float32",
         address: str | None = None, force: bool = False, log: Callable[[str], None] = lambda message: None,
         quiet: bool = True, null="auto", key_files: list = (), generation_log: str | None = None) -> ScanSummary:
    """Verify every image under ``sources`` against the keys, one row per image in ``output``,
    on the actor ``pool`` of a Ray cluster (joining ``address``, else a local Ray). ``generation_log``:
    the generation log every worker checks provenance against (PostgreSQL for workers on many machines)."""
    t0 = time.perf_counter()
    keys, problems = load_keys(list(key_sources))
    for problem in problems:
        log(f"warning: {problem} (skipped; {len(keys)} keys in use)")
    check_key_set(keys)
    recovery = recovery.for_model(default_recovery(keys[0].model))  # what the workers' Verifier will run
    null = resolve_nulls(null, keys[0].model, recovery.looks(), tuple(keys[0].latent_shape), key_files)
    generation_log = located(generation_log)
    results = ResultsFile(output, force)
    listed = list_images([str(s) for s in sources])
    require_usable([(shown, error) for shown, _, error in listed])
    done = results.rows()
    results.check_settings(settings_record(keys, recovery, decision, null), done)
    seen = {row["path"] for row in done}
    todo = [(shown, read, error) for shown, read, error in listed if shown not in seen]
    if len(listed) > len(todo):
        log(f"skipping {len(listed) - len(todo)} images already in {output}")
    failed = [asdict(failure(shown, error, recovery, decision.alpha, len(keys))) for shown, _, error in todo if error]
    results.append(failed)
    readable = {read: shown for shown, read, error in todo if error is None}
    run = Run(t0, rows=list(failed))
    try:  # what arrived is kept (a .parquet scan merges its parts) even when the scan stops
        if readable:
            worker = dict(keys=keys, recovery=recovery, decision=decision, device=device, dtype=dtype, null=null,
                          generation_log=generation_log)
            run_pool(readable, worker, pool, results, run, address=address, device=device, log=log, quiet=quiet)
    finally:
        results.close()
    return run.summary(str(output), skipped=len(listed) - len(todo))


def settings_record(keys: list, recovery: Recovery, decision: Decision, null) -> dict:
    """The settings a results file is made under; a rerun with other settings is refused."""
    return {"inversion": recovery.label, "iterations": recovery.iters, "ddim_steps": recovery.ddim_steps,
            "exact": recovery.exact, "alpha": decision.alpha, "search": decision.search, "keys_tested": len(keys),
            "keys": sorted(k.key_id for k in keys),
            "null_models": {role: null_label(n) for role, n in null.items()}}


@dataclass
class Run:
    """What a scan has seen so far: its rows, when the pool's batches arrived, and the pool's size."""

    t0: float
    rows: list = field(default_factory=list)
    arrivals: list = field(default_factory=list)  # (seconds, images verified so far)
    workers: int = 0

    def arrived(self, rows: list, log: Callable[[str], None]) -> None:
        self.rows.extend(rows)
        self.arrivals.append((time.perf_counter() - self.t0, len(rows) + (self.arrivals[-1][1] if self.arrivals else 0)))
        if len(self.arrivals) == 1:
            log(f"first results after {self.arrivals[0][0]:.1f}s")

    def summary(self, output: str, skipped: int) -> ScanSummary:
        seconds = time.perf_counter() - self.t0
        steady = steady_rate(self.arrivals)
        return ScanSummary(
            output=output, images=len(self.rows), skipped=skipped,
            watermarked=sum(bool(r["watermarked"]) for r in self.rows),
            errors=sum(r["error"] is not None for r in self.rows), seconds=round(seconds, 2),
            images_per_second=round(len(self.rows) / seconds, 3), workers=self.workers,
            first_result_seconds=round(self.arrivals[0][0], 2) if self.arrivals else None,
            steady_images_per_second=None if steady is None else round(steady, 3))


def pool_size(pool: Pool, resources: dict, device: str, files: int) -> tuple[int, float]:
    """(workers, GPUs per worker) for ``files`` images on a cluster with ``resources``: never more
    workers than batches, so no actor loads the model for nothing."""
    gpus = default_gpus(resources, device) if pool.gpus_per_worker is None else pool.gpus_per_worker
    workers = pool.workers
    if workers is None:
        workers = int(resources.get("GPU", 0) // gpus) if gpus else max(1, int(resources.get("CPU", 1) // pool.cpus_per_worker))
        if workers < 1:
            raise ValueError(f"the cluster has {resources.get('GPU', 0):g} GPUs: not enough for one worker "
                             f"with {gpus:g}")
    return min(workers, blocks(files, pool.batch)), gpus


def blocks(files: int, batch: int) -> int:
    """Read tasks: one per batch (the pool shares the files evenly), at most MAX_BLOCKS."""
    return min(-(-files // batch), MAX_BLOCKS)


def run_pool(readable: dict[str, str], worker: dict, pool: Pool, results: ResultsFile, run: Run, *,
             address: str | None, device: str, log: Callable[[str], None], quiet: bool) -> None:
    """Verify the files ``readable`` (path Ray reads -> path shown) on an actor pool of
    ``ScanWorker(**worker)`` actors, appending each batch's rows to ``results`` as it arrives."""
    ray = connect(address)  # Ray's own logs: errors only
    log(f"Ray up in {time.perf_counter() - run.t0:.1f}s")
    workers, gpus = pool_size(pool, ray.cluster_resources(), device, len(readable))
    run.workers = workers
    log(f"scanning {len(readable)} images with {workers} workers ({pool.cpus_per_worker} CPU"
        + (f", {gpus:g} GPU" if gpus else "") + " each)")
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = not quiet
    # Reading is I/O: it asks for no CPU, so an actor pool that holds every CPU cannot starve
    # it, and at most one read task per worker runs at once (each is a process to start).
    ds = ray.data.read_binary_files(list(readable), include_paths=True, num_cpus=0, concurrency=workers,
                                    override_num_blocks=blocks(len(readable), pool.batch))
    ds = ds.map_batches(ScanWorker, fn_constructor_kwargs=dict(worker, threads=pool.cpus_per_worker), batch_size=pool.batch,
                        batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
                        num_cpus=pool.cpus_per_worker, num_gpus=gpus)
    shown_as = {**{read.split("://", 1)[-1]: shown for read, shown in readable.items()}, **readable}
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = table.to_pylist()
        for row in rows:  # back to the path as listed (Ray gives URIs without their scheme)
            row["path"] = shown_as.get(row["path"], row["path"])
        results.append(rows)
        run.arrived(rows, log)
