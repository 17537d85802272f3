"""The held-out images of measure.py: one PNG per seed, 50 DDIM steps, by a bundled model.

    python docs/bench/verdict/make_images.py MODEL OUT FIRST N [wm | photos]

Clean: z_T ~ N(0, I) from seed s. With ``wm``: image s carries its own ``rand`` key, of seed s + 7
(what measure.py tests it against). With ``photos``: N random crops of the photographs shipped in
Python packages (``bench.null.photographs``, generator seeded with FIRST) at the model's size,
named FIRST.. (written again whole: the same crops). Images already in OUT are kept (a stopped run
resumes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from watermark.bench.null import photographs
from watermark.io.images import save_png
from watermark.models import get_model
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key

BATCH = 8


def main(name: str, out: str, first: int, n: int, kind: str) -> None:
    torch.set_num_threads(1)
    model = get_model(name)
    shape = model.latent_shape(model.default_size)
    Path(out).mkdir(parents=True, exist_ok=True)
    if kind == "photos":
        crops = photographs(n, model.default_size, seed=first)
        if crops is None:
            sys.exit("the photographs come with the train extra: pip install 'ringmark[train]'")
        for s, image in zip(range(first, first + n), crops):
            save_png((image + 1) / 2, f"{out}/{s}.png")
        return
    for i in range(first, first + n, BATCH):
        seeds = [s for s in range(i, min(i + BATCH, first + n)) if not Path(f"{out}/{s}.png").exists()]
        if not seeds:
            continue
        if kind == "wm":
            z = torch.cat([watermarked_latents(new_key(name, shape, seed=s + 7), seeds=[s]) for s in seeds])
        else:
            z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
        for s, image in zip(seeds, model.generate(z, 50)):
            save_png(image, f"{out}/{s}.png")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) > 5 else "clean")
