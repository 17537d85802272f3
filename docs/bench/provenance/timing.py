"""verify's time with ``--log`` against without (issue 35's target: <= 1.3x on ``tiny``, unattacked).

16 watermarked images embedded with the log (one key), verified as a folder through ``api.verify``
with and without ``log=``, alternating, ``--repeats`` times each; medians of seconds per image.
The model is loaded once before (both runs reuse it), as in a ``serve`` process.

    python docs/bench/provenance/timing.py -o docs/bench/provenance/timing.json
"""

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from watermark import api


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-o", "--output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key = api.keygen(tmp / "key.json", seed=3)
        api.embed(key, tmp / "out", n=args.n, log=tmp / "gen.sqlite")
        api.verify([str(tmp / "out")], [key])  # warm: the model and null models loaded
        times = {"without": [], "with": []}
        for _ in range(args.repeats):
            for name, log in (("without", None), ("with", tmp / "gen.sqlite")):
                t0 = time.perf_counter()
                rows = api.verify([str(tmp / "out")], [key], log=log)
                times[name].append((time.perf_counter() - t0) / args.n)
        confirmed = sum(r.provenance == "confirmed" for r in rows)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"images": args.n, "repeats": args.repeats, "seconds_per_image": med,
           "ratio": med["with"] / med["without"], "confirmed_with_log": confirmed, "all": times,
           "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
           "command": "python " + " ".join(sys.argv)}
    print(json.dumps(res, indent=1))
    if args.output:
        Path(args.output).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
