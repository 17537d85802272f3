"""The generation log at scale (issue 35, item 1): a lookup by key id among 10^6 logged images,
in SQLite (and PostgreSQL with --url), through ``GenerationLog`` as ``verify --log`` runs it.

Rows are synthetic but full size (a 4x8x8 float16 fingerprint each); keys from a ring of 2,048,
so a key holds ~490 generations, or one key per image with --fresh-keys.

    python docs/bench/provenance/lookup.py --rows 1000000 --log /tmp/lookup.sqlite -o docs/bench/provenance/lookup.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from watermark.io.genlog import Generation, GenerationLog


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=2048)
    ap.add_argument("--log", required=True, help="a new SQLite path or a database URL")
    ap.add_argument("--lookups", type=int, default=200)
    ap.add_argument("-o", "--output")
    args = ap.parse_args()
    log = GenerationLog.open(args.log)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    start = log.count()
    for i in range(start, args.rows, 10_000):
        log.add(Generation(image_id=f"{j:012d}", key_id=f"{j % args.keys:016x}", model="tiny", seed=j, prompt="",
                           steps=50, guidance=None, created="2026-12-03T00:00:00.000+00:00", file=f"{j}.png",
                           sha256=f"{j:064x}", fingerprint=rng.standard_normal(256).astype(np.float16),
                           fingerprint_kind="latent8") for j in range(i, min(args.rows, i + 10_000)))
    insert = time.perf_counter() - t0
    times = []
    for k in rng.integers(0, args.keys, args.lookups):
        t = time.perf_counter()
        found, _ = log.fingerprints(f"{int(k):016x}", "latent8")  # as verify --log looks a key up
        times.append(time.perf_counter() - t)
    t = time.perf_counter()
    pool = log.unrelated("tiny", f"{0:016x}", "latent8", 2048)
    t_pool = time.perf_counter() - t
    res = {"rows": log.count(), "keys": args.keys, "rows_per_key": len(found), "insert_seconds": round(insert, 1),
           "lookup_ms_median": round(1000 * float(np.median(times)), 2),
           "lookup_ms_p95": round(1000 * float(np.quantile(times, 0.95)), 2),
           "reference_pool_ms": round(1000 * t_pool, 1), "pool": len(pool),
           "database": args.log.split("://")[0] if "://" in args.log else "sqlite",
           "machine": f"{platform.machine()}, {platform.python_version()}", "command": "python " + " ".join(sys.argv),
           "date": time.strftime("%Y-%m-%d")}
    print(json.dumps(res, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
