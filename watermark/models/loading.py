"""Reading a checkpoint's layout and loading its diffusers pipeline, for the family adapters."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .protocol import ModelError


def pipeline_class(source: str, name: str) -> str | None:
    """The ``_class_name`` of the model_index.json of ``source`` (folder or hub id), or None when
    a folder has none (the bundled models'); ModelError when the source cannot be read at all."""
    folder = Path(source)
    if folder.is_dir():
        index = folder / "model_index.json"
        return json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    from diffusers import DiffusionPipeline

    try:
        return DiffusionPipeline.load_config(source).get("_class_name")
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None


def load_pipeline(cls: str, source: str, name: str, device: torch.device, dtype: torch.dtype, extra: str = "sd",
                  **options):
    """diffusers' ``cls`` from ``source`` on ``device`` in ``dtype``, every network frozen
    (inference only: no parameter collects .grad), its progress bar off; ``options``: keywords of
    the pipeline's own (SDXL: ``add_watermarker``) or of ``from_pretrained`` (Wan keeps modules in
    float32, which needs ``low_cpu_mem_usage=True``). ``extra``: the ringmark extra that installs
    what the family needs, named in the error when a package is missing."""
    import diffusers

    try:
        pipe = getattr(diffusers, cls).from_pretrained(source, dtype=dtype, **{"low_cpu_mem_usage": False, **options})
    except ImportError as e:
        said = " ".join(str(e).split())  # diffusers' message spans lines; ours is one
        raise ModelError(f"model {name!r} needs a package that is not installed ({said}); try pip install "
                         f"'ringmark[{extra}]'") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    return pipe
