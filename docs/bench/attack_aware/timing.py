"""Issue 26: verify time of the adaptive default against the encoder alone, on unattacked images,
timed in alternation (encoder, default, encoder, default, ...) after a warm-up, so that neither
gets the machine's slow minutes alone. The images are measure.py's (same seeds), unattacked:
100 watermarked and 100 clean; `pipeline.detect` in batches of 25 as measure.py runs it.

    python docs/bench/attack_aware/timing.py --repeats 5    # writes docs/bench/attack_aware/timing-tiny.json
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from measure import RECOVERIES, attacked_images, commit  # noqa: E402

from watermark import Decision, detect, get_model, make_key  # noqa: E402
from watermark.io.nullfile import find_null, load_null  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recoveries", default="encoder,photometric + adaptive (attack_aware:2)")
    args = parser.parse_args()
    measured = commit()
    model = get_model(args.model)
    key = make_key(model, seed=20261201)
    attacked, _ = attacked_images(model, key, args.n)
    x = torch.cat(attacked["none"])
    names = args.recoveries.split(",")
    nulls = {}
    for name in names:
        path = find_null(model.name, RECOVERIES[name].for_model(model.default_recovery).looks()["first"], tuple(key.latent_shape))
        nulls[name] = load_null(path) if path else None

    def once(name: str) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(x), 25):
            detect(model, x[i : i + 25], [key], RECOVERIES[name], Decision(), nulls={"first": nulls[name]})
        return (time.perf_counter() - t0) / len(x)

    for name in names:  # warm-up
        once(name)
    seconds = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            seconds[name].append(once(name))
            print(name, round(seconds[name][-1], 4), flush=True)
    base = statistics.median(seconds[names[0]])
    res = {"model": args.model, "n_images": len(x), "commit": measured, "date": time.strftime("%Y-%m-%d"),
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
           "command": "python docs/bench/attack_aware/timing.py " + " ".join(sys.argv[1:]),
           "seconds_per_image": seconds,
           "median": {name: statistics.median(s) for name, s in seconds.items()},
           "vs_first": {name: statistics.median(s) / base for name, s in seconds.items()}}
    out = Path(__file__).parent / f"timing-{args.model}.json"
    out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("median", "vs_first")}))


if __name__ == "__main__":
    main()
