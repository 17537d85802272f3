"""What `verify --report` costs beyond the verification itself, on a folder of N images of the
bundled model (half watermarked, half clean): the report's size, the seconds of the run with the
report against the same run without it, and the seconds of writing the file alone.

    python docs/bench/report/measure.py -n 1000    # writes docs/bench/report/report_1000.json

Issue 25's targets: at 1,000 images, <= 10 MB and <= 30 s beyond the verification.
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from watermark import api
from watermark.io import report as report_io


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=10, help="generation steps of the images")
    parser.add_argument("-o", default=str(Path(__file__).parent))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        key = api.keygen(tmp / "key.json", seed=1)
        t0 = time.perf_counter()
        api.embed(key, tmp / "images" / "wm", n=args.n // 2, steps=args.steps, batch=32)
        api.embed(key, tmp / "images" / "clean", n=args.n - args.n // 2, steps=args.steps, seed=10**6,
                  watermark=False, batch=32)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain = api.verify([tmp / "images"], [key], batch=32)
        without = time.perf_counter() - t0
        written = []
        real_write = report_io.write_report

        def timed_write(*a, **kw):  # the file alone: figures, thumbnails, template
            t = time.perf_counter()
            out = real_write(*a, **kw)
            written.append(time.perf_counter() - t)
            return out

        report_io.write_report = timed_write
        import watermark.api as api_module

        api_module.write_report = timed_write
        t0 = time.perf_counter()
        rows = api.verify([tmp / "images"], [key], batch=32, report=tmp / "report.html")
        with_report = time.perf_counter() - t0
        size = (tmp / "report.html").stat().st_size
        html = (tmp / "report.html").read_text()
    assert [r.p_value for r in rows] == [r.p_value for r in plain]  # the report changes no result
    res = {
        "images": args.n, "watermarked": sum(bool(r.watermarked) for r in rows),
        "weak": sum(bool(r.weak) for r in rows), "figures": html.count('<tr class="figure">'),
        "report_mb": round(size / 2**20, 2), "seconds_generating": round(generated, 1),
        "seconds_verify": round(without, 1), "seconds_verify_with_report": round(with_report, 1),
        "seconds_beyond_verification": round(with_report - without, 1),
        "seconds_writing_the_file": round(written[0], 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"), "command": "python docs/bench/report/measure.py " + " ".join(sys.argv[1:]),
    }
    out = Path(args.o) / f"report_{args.n}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
