"""What every provenance benchmark writes last: its time, the machine and the command, then the JSON."""

import json
import platform
import sys
import time

import torch


def finish(res: dict, t0: float, output: str | None) -> dict:
    """Stamp ``res`` (seconds since ``t0``, machine, command) and write it to ``output`` if given."""
    res.update(seconds=round(time.perf_counter() - t0, 1),
               machine=f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
               command="python " + " ".join(sys.argv))
    if output:
        with open(output, "w") as f:
            json.dump(res, f, indent=1)
    return res
