"""Model adapters behind one protocol, and the registry that loads them by name, hub id or path.

    model = get_model("tiny")          # the bundled model, loaded once per process
    model = load_model("/path/to/sd")  # a diffusers folder or hub id of a supported family
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

from inversion import DTYPES

from . import flow_unet, flux, sd, sd3, sdxl, text_to_video, wan
from .loading import pipeline_class
from .protocol import DiffusionModel, ModelError

TINY_PATH = Path(__file__).parent / "tiny"
TINY_SD_PATH = Path(__file__).parent / "tiny-sd"  # the same sizes, Stable Diffusion's VAE recipe
TINY_FLOW_PATH = Path(__file__).parent / "tiny-flow"  # tiny's VAE, a rectified-flow UNet
TINY_VIDEO_PATH = Path(__file__).parent / "tiny-video"  # tiny's VAE per frame, a UNet3D (TextToVideoSDPipeline)
# names ringmark resolves itself; anything else is a hub id or a folder
NAMED = {"tiny": TINY_PATH, "tiny-sd": TINY_SD_PATH, "tiny-flow": TINY_FLOW_PATH, "tiny-video": TINY_VIDEO_PATH}
# model_index.json's pipeline class -> its family's load(source, name, device, dtype); a new family
# is one file in this folder and one line here
FAMILIES = {
    "StableDiffusionXLPipeline": sdxl.load,
    "StableDiffusion3Pipeline": sd3.load,
    "FluxPipeline": flux.load,
    "WanPipeline": wan.load,  # video: z_T is (C, F, H, W)
    "TextToVideoSDPipeline": text_to_video.load,  # video, 2D VAE per frame (ModelScope, zeroscope, tiny-video)
    "ringmark:FlowUNet": flow_unet.load,  # the bundled tiny-flow: diffusers has no pipeline for it
}
VIDEO_FAMILIES = {"WanPipeline", "TextToVideoSDPipeline"}  # families whose z_T is (C, F, H, W): clips
from ..choices import DEVICES  # noqa: E402 (torch-free, for the command line)

__all__ = ["DEVICES", "DTYPES", "DiffusionModel", "ModelError", "NAMED", "TINY_PATH", "TINY_SD_PATH", "default_recovery",
           "get_model", "load_model", "makes_video", "resolve_device", "resolve_dtype"]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_model(name: str = "tiny", device: str = "cpu", dtype: str | torch.dtype = "float32") -> DiffusionModel:
    """Load ``tiny`` / ``tiny-sd`` / ``tiny-flow`` / ``tiny-video`` (bundled) or a checkpoint by hub
    id or local folder; the family is the pipeline class its model_index.json names (SD 1.x/2.x,
    SDXL, SD3, FLUX, Wan 2.1, TextToVideoSD, ringmark:FlowUNet)."""
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    source = str(NAMED.get(name, name))
    pipeline = pipeline_class(source, name)
    if pipeline is None or pipeline == "StableDiffusionPipeline":
        model = sd.load(source, name, torch_device, torch_dtype)
        if model is None:
            raise ModelError(f"cannot load model {name!r}: no model_index.json, and not a folder with vae/ and unet/")
    elif pipeline not in FAMILIES:
        raise ModelError(f"cannot load model {name!r}: its model_index.json names {pipeline}; ringmark loads "
                         + ", ".join(["StableDiffusionPipeline", *FAMILIES]))
    else:
        model = FAMILIES[pipeline](source, name, torch_device, torch_dtype)
    if torch_device.type == "cpu" and not getattr(model, "video", False):  # channels-last is for 4-D weights
        # Convolutions run faster on channels-last tensors on a CPU: E(D(z)) of tiny 0.55-0.8x, its UNet
        # ~0.9x (docs/bench/speed). The price: the sums are blocked by batch, so an image decoded alone
        # and in a batch may differ by 2e-4 (1/40 of an 8-bit level). Not measured on a GPU: left as loaded.
        for module in (getattr(model, "vae", None), getattr(model, "denoiser", None)):
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
    return model


def makes_video(name: str) -> bool:
    """Whether model ``name`` makes clips (a video family), from its model_index.json, loading no weights."""
    return pipeline_class(str(NAMED.get(name, name)), name) in VIDEO_FAMILIES


def default_recovery(name: str) -> dict:
    """The recovery model ``name`` declares (``DiffusionModel.default_recovery``), without loading it."""
    return sd.default_recovery(str(NAMED.get(name, name)))


MAX_LOADED = 4  # models kept by get_model; the least recently asked for goes first
_LOADED: OrderedDict[tuple, DiffusionModel] = OrderedDict()


def get_model(name: str = "tiny", device: str = "cpu", dtype: str | torch.dtype = "float32") -> DiffusionModel:
    """``load_model``, once per process and (name, device, dtype), for the ``MAX_LOADED`` most
    recently asked for (a caller holding a model keeps it whatever the cache drops)."""
    folder = Path(name)
    source = str(folder.resolve()) if name not in NAMED and folder.is_dir() else name  # one copy per folder
    key = (source, resolve_device(device).type, resolve_dtype(dtype))
    if key not in _LOADED:
        _LOADED[key] = load_model(name, device, dtype)
        while len(_LOADED) > MAX_LOADED:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]
