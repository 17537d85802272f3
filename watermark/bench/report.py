"""What the benchmarks share: the device and machine line, NMSE, and writing JSON + markdown + a plot."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Callable

import torch


def bench_device(device: str) -> str:
    """The benchmarks' device ("cpu" or "cuda"); on CUDA, float32 is reported as float32: no TF32
    in cuDNN convolutions or matmuls."""
    from ..models import resolve_device

    dev = resolve_device(device).type
    if dev == "cuda":
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    return dev


def nmse_db(z_hat: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Per-sample ||z_hat - z||^2 / ||z||^2 in dB (float32, CPU)."""
    z_hat, z = z_hat.float().cpu(), z.float().cpu()
    return 10 * torch.log10((z_hat - z).flatten(1).pow(2).sum(1) / z.flatten(1).pow(2).sum(1))


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
    ``write_json`` removes it when the run completes."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.partial.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    return path


def write_json(res: dict, out: Path, stem: str) -> Path:
    """<stem>.json, the finished run, in place of its <stem>.partial.json."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stem}.json"
    path.write_text(json.dumps(res, indent=1) + "\n")
    (out / f"{stem}.partial.json").unlink(missing_ok=True)
    return path


def write(res: dict, out: Path, stem: str, markdown: Callable[[dict], str],
          plot: Callable[[dict, Path], bool], plot_name: str) -> list[Path]:
    """<stem>.json, <stem>.md and, with matplotlib, <plot_name> in ``out``."""
    files = [write_json(res, out, stem), out / f"{stem}.md"]
    files[1].write_text(markdown(res))
    if plot(res, out / plot_name):
        files.append(out / plot_name)
    return files
