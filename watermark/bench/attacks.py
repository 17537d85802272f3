"""Tree-Ring's robustness attacks (Wen et al. 2023, Sec. 5), on PIL images.

Tree-Ring's settings are for 512 px images; where an attack has a size in pixels (the blur
radius) it is scaled by side / 512, so at 128 px the radius-4 blur becomes radius 1.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ..choices import ATTACKS  # no attack, then Tree-Ring's six: named where the command line reads them


def attack(image: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """Apply one attack (of ``ATTACKS`` or ``HELD_OUT``); ``rng`` draws what Tree-Ring draws at
    random (crop position, brightness)."""
    if name in HELD_OUT:
        return HELD_OUT[name](image, rng)
    side = image.size[0]
    if name == "none":
        return image
    if name == "rotation":  # 75 degrees, as Tree-Ring
        return image.rotate(75, resample=Image.Resampling.BICUBIC)
    if name == "jpeg":  # quality 25
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=25)
        buf.seek(0)
        return Image.open(buf).convert("RGB")
    if name == "crop":  # random resized crop, area 0.75 and aspect ratio 0.75, back to full size
        w = round(side * math.sqrt(0.75 * 0.75))
        h = min(side, round(side * math.sqrt(0.75 / 0.75)))
        x0, y0 = int(rng.integers(0, side - w + 1)), int(rng.integers(0, side - h + 1))
        return image.crop((x0, y0, x0 + w, y0 + h)).resize((side, side), Image.Resampling.BICUBIC)
    if name == "blur":  # Gaussian blur, radius 4 at 512 px
        return image.filter(ImageFilter.GaussianBlur(radius=4 * side / 512))
    if name == "noise":  # additive Gaussian noise, std 0.1 of the [0, 1] range
        a = np.asarray(image, dtype=np.float64) / 255 + rng.normal(0, 0.1, (side, side, 3))
        return Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8))
    if name == "brightness":  # ColorJitter(brightness=6): factor uniform in [0, 7]
        return ImageEnhance.Brightness(image).enhance(float(rng.uniform(0, 7)))
    raise ValueError(f"attack must be one of {ATTACKS} or {tuple(HELD_OUT)}, got {name!r}")


def _jpeg(im: Image.Image, q: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=q)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _crop(im: Image.Image, share: float, centre: bool) -> Image.Image:
    s = im.size[0]
    w = round(s * share)
    x0 = (s - w) // 2 if centre else 0
    return im.crop((x0, x0, x0 + w, x0 + w)).resize((s, s), Image.Resampling.BICUBIC)


def _occlude(im: Image.Image, rng) -> Image.Image:
    s = im.size[0]
    a = np.asarray(im).copy()
    x, y = rng.integers(0, s // 2 + 1, 2)
    a[y : y + s // 2, x : x + s // 2] = 0  # a quarter of the image
    return Image.fromarray(a)


HELD_OUT = {  # edits beyond Tree-Ring's six, none used to tune a threshold, a rule or a null model (issue 34)
    "rotation 20": lambda im, rng: im.rotate(20, resample=Image.Resampling.BICUBIC),
    "centre crop 80 %": lambda im, rng: _crop(im, 0.8, True),
    "corner crop 77 %": lambda im, rng: _crop(im, 0.77, False),
    "rotation 10 + crop 85 % + JPEG 60": lambda im, rng: _jpeg(_crop(im.rotate(10, resample=Image.Resampling.BICUBIC),
                                                                 0.85, True), 60),
    "25 % occlusion": _occlude,
    "resize 0.5 and back": lambda im, rng: im.resize((im.size[0] // 2,) * 2, Image.Resampling.BICUBIC).resize(
        im.size, Image.Resampling.BICUBIC),
    "JPEG 50": lambda im, rng: _jpeg(im, 50),
    "contrast 1.5": lambda im, rng: ImageEnhance.Contrast(im).enhance(1.5),
    "saturation 0.5": lambda im, rng: ImageEnhance.Color(im).enhance(0.5),
    "median 3": lambda im, rng: im.filter(ImageFilter.MedianFilter(3)),
    "horizontal mirror": lambda im, rng: ImageOps.mirror(im),
}


def with_manifest_of(signed_png: bytes, pixels: Image.Image) -> bytes:
    """``pixels`` as a PNG carrying ``signed_png``'s C2PA chunk (caBX) unchanged, after its header:
    a manifest moved onto other pixels (Content Credentials' hard binding must fail)."""
    from ..io.credentials import PNG_SIGNATURE, png_chunks

    buf = io.BytesIO()
    pixels.save(buf, format="PNG")
    new = png_chunks(buf.getvalue())
    manifest = next(chunk for kind, chunk in png_chunks(signed_png) if kind == b"caBX")
    return PNG_SIGNATURE + new[0][1] + manifest + b"".join(chunk for _, chunk in new[1:])
