"""Reading suspect images robustly, and finding them in folders."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MIN_SIDE = 16


class ImageError(Exception):
    """An input image cannot be used (one-line message)."""


def find_images(paths: list[str]) -> list[tuple[str, str | None]]:
    """Expand files and folders (recursively, sorted) into (path, error-or-None) pairs."""
    out: list[tuple[str, str | None]] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(str(f) for f in path.rglob("*")
                           if (f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                out.append((p, "folder holds no images"))
            out.extend((f, None) for f in found)
        elif path.exists() or path.is_symlink():  # a broken link is reported by load_image
            out.append((p, None))
        else:
            out.append((p, "no such file or folder"))
    return out


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


def load_image(path: str, size: int) -> tuple[torch.Tensor, str | None]:
    """(3, size, size) tensor in [-1, 1] and a note (or None) on what was converted.

    Raises ImageError for anything that is not a usable image: missing, empty, not an
    image, truncated, too small, a decompression bomb, unreadable.
    """
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
    notes = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            ImageFile.LOAD_TRUNCATED_IMAGES = False
            with Image.open(p) as im:
                n_frames = getattr(im, "n_frames", 1)
                if n_frames > 1:
                    im.seek(0)
                    notes.append(f"first frame of {n_frames}")
                im.load()
                if min(im.size) < MIN_SIDE:
                    raise ImageError(f"image is {im.size[0]}x{im.size[1]}; at least {MIN_SIDE}x{MIN_SIDE} is needed")
                mode = im.mode
                rgb = _to_rgb(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError("too many pixels (possible decompression bomb)") from None
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
    if rgb.size != (size, size):
        notes.append(f"resized from {rgb.size[0]}x{rgb.size[1]}")
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
    return x, "; ".join(notes) or None


def save_png(image01: torch.Tensor, path: str | os.PathLike) -> None:
    """(3, H, W) in [0, 1] -> 8-bit PNG."""
    a = (image01.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    Image.fromarray(a).save(path, format="PNG")
