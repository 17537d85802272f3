"""What both benchmarks share: the machine line, and writing JSON + markdown + an optional plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable

import torch


def machine(device: str = "cpu") -> str:
    """CPU model, cores and torch version; the GPU's name too when ``device`` is cuda."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = f"{cpu}; {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} threads)"
    return out + (f"; GPU {torch.cuda.get_device_name()}" if device == "cuda" else "")


def pyplot():
    """matplotlib's pyplot (Agg), or None when the optional 'plot' extra is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_partial(res: dict, out: Path, stem: str) -> Path:
    """<stem>.partial.json: the stages done so far, so a run stopped by a time limit keeps them;
    ``write`` removes it when the run completes."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.partial.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    return path


def write(res: dict, out: Path, stem: str, markdown: Callable[[dict], str],
          plot: Callable[[dict, Path], bool], plot_name: str) -> list[Path]:
    """<stem>.json, <stem>.md and, with matplotlib, <plot_name> in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    files = [out / f"{stem}.json", out / f"{stem}.md"]
    files[0].write_text(json.dumps(res, indent=1) + "\n")
    files[1].write_text(markdown(res))
    if plot(res, out / plot_name):
        files.append(out / plot_name)
    return files
