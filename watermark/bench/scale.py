"""`ringmark bench scale`: the Ray entry points against one process.

- scan: `ringmark scan` with 1 and 2 single-thread workers against `ringmark verify` on the same
  folder, each a fresh command as a user runs it (Python start, Ray start, model loads included);
  the Ray overhead is scan (1 worker, 1 thread) minus verify on 1 thread.
- serve: one replica, with Ray Serve's batching and without (max batch 1), under ``clients``
  concurrent clients sending one image per request: throughput and latency percentiles.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import report


def make_folder(root: Path, n: int, steps: int) -> Path:
    """A key and n images of the bundled model, half watermarked, half clean."""
    from .. import api

    key = api.keygen(root / "key.json", "tiny", seed=11)
    api.embed(key, root / "images" / "wm", n=n - n // 2, steps=steps, seed=0)
    api.embed(key, root / "images" / "clean", n=n // 2, steps=steps, seed=10_000, watermark=False)
    return root / "images"


def timed(command: list[str], threads: int | None = None) -> tuple[float, str]:
    """Wall seconds and stdout of a fresh ``ringmark`` command (``threads``: OMP_NUM_THREADS)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "watermark", *command], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def bench_scan(root: Path, folder: Path, n: int, log: Callable[[str], None]) -> dict:
    key = str(root / "key.json")
    out = {}
    for name, threads in (("verify", None), ("verify_1_thread", 1)):
        seconds, _ = timed(["verify", str(folder), "--key", key, "--json", "-q"], threads)
        out[name] = {"seconds": round(seconds, 2), "images_per_second": round(n / seconds, 3)}
        log(f"{name}: {seconds:.1f}s")
    for workers in (1, 2):
        seconds, stdout = timed(["scan", str(folder), "--key", key, "-o", str(root / f"scan{workers}.jsonl"),
                                 "--workers", str(workers), "--cpus-per-worker", "1", "-q"])
        summary = json.loads(stdout)
        out[f"scan_{workers}"] = {"seconds": round(seconds, 2), "images_per_second": round(n / seconds, 3),
                                  "first_result_seconds": summary["first_result_seconds"],
                                  "steady_images_per_second": summary["steady_images_per_second"]}
        log(f"scan, {workers} workers: {seconds:.1f}s ({summary})")
    out["ray_overhead_seconds"] = round(out["scan_1"]["seconds"] - out["verify_1_thread"]["seconds"], 2)
    return out


def load(url: str, images: list[bytes], clients: int, requests: int) -> dict:
    """``requests`` single-image POSTs from ``clients`` threads: throughput, latency percentiles."""
    import httpx

    def one(i: int) -> tuple[float, int]:
        t = time.perf_counter()
        r = client.post("/v1/verify", files=[("files", (f"{i}.png", images[i % len(images)], "image/png"))])
        return time.perf_counter() - t, r.status_code

    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        for i in range(2):
            one(i)  # warm-up: first batches pay one-time costs
        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(one, range(requests)))
        seconds = time.perf_counter() - t0
    latency = np.array([a[0] for a in answers])
    return {"requests": requests, "errors": sum(code != 200 for _, code in answers), "seconds": round(seconds, 2),
            "images_per_second": round(requests / seconds, 3), "p50_seconds": round(float(np.median(latency)), 3),
            "p95_seconds": round(float(np.percentile(latency, 95)), 3)}


def bench_serve(root: Path, folder: Path, clients: int, requests: int, *, cpus: int, log: Callable[[str], None]) -> dict:
    from ray import serve

    from ..io.keyring import load_keys
    from ..scale.cluster import connect, free_port
    from ..scale.serve import Service, start

    connect(num_cpus=os.cpu_count())
    keys, _ = load_keys([root / "key.json"])
    images = [p.read_bytes() for p in sorted(folder.rglob("*.png"))]
    out = {}
    for name, max_batch in (("batched", 8), ("unbatched", 1)):
        service = Service(port=free_port(), max_batch=max_batch, cpus_per_replica=cpus, max_queued=4 * requests)
        url = start(keys, service=service, device="cpu")
        out[name] = {"max_batch": max_batch, **load(url, images, clients, requests)}
        log(f"serve {name}: {out[name]}")
        serve.shutdown()
    out["speedup"] = round(out["batched"]["images_per_second"] / out["unbatched"]["images_per_second"], 2)
    return out


def main(n: int, clients: int, requests: int, steps: int, outdir: Path, log: Callable[[str], None],
         skip_scan: bool = False, skip_serve: bool = False) -> str:
    cpus = os.cpu_count() or 1
    res = {"command": "ringmark " + " ".join(sys.argv[1:]), "machine": report.machine("cpu"),
           "date": time.strftime("%Y-%m-%d"), "n": n, "clients": clients, "requests": requests,
           "replica_cpus": cpus}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        folder = make_folder(root, n, steps)
        log(f"made {n} images in {time.perf_counter() - t0:.0f}s")
        if not skip_scan:
            res["scan"] = bench_scan(root, folder, n, log)
        if not skip_serve:
            res["serve"] = bench_serve(root, folder, clients, requests, cpus=cpus, log=log)
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "scale.json").write_text(json.dumps(res, indent=1) + "\n")
    text = markdown(res)
    (outdir / "scale.md").write_text(text)
    return text


def markdown(res: dict) -> str:
    lines = [f"`{res['command']}`; {res['machine']}; {res['date']}", ""]
    if "scan" in res:
        s, n = res["scan"], res["n"]
        lines += [f"Scan of {n} images (half watermarked), each a fresh command (Python, Ray and model start "
                  f"included):", "",
                  "| command | seconds | images/s | first result (s) | steady images/s |", "|---|---|---|---|---|"]
        names = {"verify": "`ringmark verify` (torch's default threads)", "verify_1_thread": "`ringmark verify`, 1 thread",
                 "scan_1": "`ringmark scan --workers 1` (1 thread)", "scan_2": "`ringmark scan --workers 2` (1 thread each)"}
        for key, label in names.items():
            r = s[key]
            lines.append(f"| {label} | {r['seconds']} | {r['images_per_second']} | {r.get('first_result_seconds', '–')} | "
                         f"{r.get('steady_images_per_second', '–')} |")
        rates = (s["scan_2"]["steady_images_per_second"], s["scan_1"]["steady_images_per_second"])
        # None: a worker's images arrived in one batch (a small folder), no steady rate to tell
        steady = f"{rates[0] / rates[1]:.2f}x" if None not in rates else "– (too few batches to tell)"
        lines += ["", f"- 2 workers / 1 worker: {s['scan_1']['seconds'] / s['scan_2']['seconds']:.2f}x end to end, "
                      f"{steady} steady (target 1.6x)",
                  f"- scan, 2 workers / `ringmark verify`: {s['verify']['seconds'] / s['scan_2']['seconds']:.2f}x "
                  f"end to end (target: no slower past 100 images)",
                  f"- Ray overhead (scan with 1 worker minus verify on 1 thread): {s['ray_overhead_seconds']}s "
                  f"(target < 15 s)", ""]
    if "serve" in res:
        v = res["serve"]
        lines += [f"Serve: one replica on {res['replica_cpus']} CPUs, {res['clients']} concurrent clients, "
                  f"{res['requests']} single-image requests:", "",
                  "| | max batch | images/s | p50 latency (s) | p95 latency (s) | errors |", "|---|---|---|---|---|---|"]
        for name in ("batched", "unbatched"):
            r = v[name]
            lines.append(f"| {name} | {r['max_batch']} | {r['images_per_second']} | {r['p50_seconds']} | "
                         f"{r['p95_seconds']} | {r['errors']} |")
        lines += ["", f"- batched / unbatched throughput: {v['speedup']}x (target 1.5x)", ""]
    return "\n".join(lines)
