"""Image files: finding them in folders, reading suspect images robustly, writing PNGs, and the
one conversion between PIL images and tensors that everything uses (benchmarks included)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from . import credentials
from .credentials import Credentials, CredentialsError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}  # read by ``io.videos``
MIN_SIDE = 16
MAX_ASPECT = 1.25  # squashing an image further than this to a square is worth a warning


class ImageError(Exception):
    """An input image cannot be used (one-line message)."""


def find_images(paths: list[str], videos: bool = False) -> list[tuple[str, str | None]]:
    """Expand files and folders (recursively, sorted; video files too with ``videos``) into
    (path, error-or-None) pairs."""
    out: list[tuple[str, str | None]] = []
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES if videos else IMAGE_SUFFIXES
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*")
                           if (f.is_file() or f.is_symlink()) and f.suffix.lower() in suffixes)
            if not found:
                out.append((p, "folder holds no images"))
            out.extend((f, None) for f in found)
        elif path.exists() or path.is_symlink():  # a broken link is reported by load_image
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out


def require_usable(found: list[tuple[str, str | None]]) -> None:
    """Raise ValueError when no (path, error) pair of ``find_images`` is usable: nothing to verify."""
    if all(error is not None for _, error in found):
        raise ValueError(f"{found[0][0]}: {found[0][1]}" if len(found) == 1 else "no usable path among the inputs")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert the modes Pillow reads to 8-bit RGB where that conversion is sound."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(np.ptp(a), 1e-12) * 255.0
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")  # transparent -> white
    return im.convert("RGB")


@dataclass
class Loaded:
    image: torch.Tensor  # (3, size, size) in [-1, 1]
    note: str | None  # what was converted (mode, frame, size)
    warning: str | None  # what may cost the watermark: a squashed aspect ratio, another size than the key's
    model: str | None = None  # the model its PNG says made it (``MODEL_TAG``, written by embed)
    credentials: Credentials | None = None  # its Content Credentials (C2PA), validated; None: not read


def load_image(path: str, size: int) -> Loaded:
    """Read ``path`` as a (3, size, size) tensor in [-1, 1], resizing (bicubic) if needed.

    Raises ImageError for anything that is not a usable image: missing, empty, not an
    image, truncated, too small, a decompression bomb, unreadable.
    """
    return _decode(check_file(path), size)


def check_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, or ImageError when it is missing, empty or unreadable (images and videos alike)."""
    p = Path(path)
    try:
        if p.stat().st_size == 0:
            raise ImageError("empty file")
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except OSError as e:
        raise ImageError(f"cannot read file ({e.strerror or e})") from None
    return p


def resize_warning(w: int, h: int, size: int, what: str = "image") -> str:
    """What a ``w`` x ``h`` ``what`` brought to the key's ``size`` x ``size`` may cost the test."""
    if max(w, h) / min(w, h) > MAX_ASPECT:
        return f"{w}x{h} {what} squashed to {size}x{size} (aspect {max(w, h) / min(w, h):.2f}); expect a weaker test"
    return f"{w}x{h} {what} resized to the key's {size}x{size}; expect a weaker test"


def decode_image(data: bytes, size: int) -> Loaded:
    """``load_image`` for the bytes of an image file (an upload, a blob a batch engine read)."""
    if not data:
        raise ImageError("empty file")
    return _decode(io.BytesIO(data), size)


def _decode(source, size: int) -> Loaded:
    """Decode a path or binary file object; see ``load_image``."""
    notes = []
    bomb = ImageError("too many pixels (possible decompression bomb)")
    try:
        with Image.open(source) as im:
            # Pillow only warns between 1x and 2x its limit; checked here, before decoding, without
            # turning warnings into errors (a process-wide setting, not safe across threads)
            if Image.MAX_IMAGE_PIXELS and im.size[0] * im.size[1] > Image.MAX_IMAGE_PIXELS:
                raise bomb
            n_frames = getattr(im, "n_frames", 1)
            if n_frames > 1:
                im.seek(0)
                notes.append(f"first frame of {n_frames}")
            im.load()
            if min(im.size) < MIN_SIDE:
                raise ImageError(f"image is {im.size[0]}x{im.size[1]}; at least {MIN_SIDE}x{MIN_SIDE} is needed")
            mode = im.mode
            made_by = getattr(im, "text", {}).get(MODEL_TAG) if im.format == "PNG" else None
            fmt = im.format
            rgb = _to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise bomb from None
    except UnidentifiedImageError:
        raise ImageError("not an image Pillow can read") from None
    except PermissionError:
        raise ImageError("permission denied") from None
    except IsADirectoryError:
        raise ImageError("is a directory") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"cannot decode image ({msg})") from None
    if mode != "RGB":
        notes.append(f"converted from {mode}")
    warning = None
    if rgb.size != (size, size):
        w, h = rgb.size
        notes.append(f"resized from {w}x{h}")
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
        warning = resize_warning(w, h, size)
    return Loaded(to_tensor([rgb])[0], "; ".join(notes) or None, warning, made_by, _credentials(source, fmt))


def _credentials(source, fmt: str | None) -> Credentials | None:
    """The Content Credentials of a decoded image (a path or a BytesIO); None where c2pa-python is missing."""
    if fmt is None:
        return None
    try:
        return credentials.read(source.getvalue() if isinstance(source, io.BytesIO) else source, fmt)
    except (CredentialsError, OSError):
        return None


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> (B, 3, H, W) float32 in [-1, 1]."""
    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32).copy()).permute(2, 0, 1)
                        for im in images]) / 127.5 - 1.0


def to_pil(images01: torch.Tensor) -> list[Image.Image]:
    """(B, 3, H, W) in [0, 1] -> 8-bit RGB PIL images."""
    a = (images01.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(x) for x in a]


MODEL_TAG = "ringmark:model"  # the PNG text chunk naming the model that made the image (nothing of the key)


def save_png(image01: torch.Tensor, path: str | os.PathLike, model: str | None = None) -> None:
    """(3, H, W) in [0, 1] -> 8-bit PNG; ``model``: named in its ``MODEL_TAG`` text chunk, so that
    verify can say when a key of another model is tested on it."""
    info = None
    if model is not None:
        info = PngInfo()
        info.add_text(MODEL_TAG, model)
    to_pil(image01[None])[0].save(path, format="PNG", pnginfo=info)
