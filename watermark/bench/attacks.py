"""Tree-Ring's robustness attacks (Wen et al. 2023, Sec. 5), on PIL images.

Tree-Ring's settings are for 512 px images; where an attack has a size in pixels (the blur
radius) it is scaled by side / 512, so at 128 px the radius-4 blur becomes radius 1.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

ATTACKS = ("none", "rotation", "jpeg", "crop", "blur", "noise", "brightness")


def attack(image: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """Apply one attack; ``rng`` draws what Tree-Ring draws at random (crop position, brightness)."""
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
    raise ValueError(f"attack must be one of {ATTACKS}, got {name!r}")
