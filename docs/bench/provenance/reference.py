"""The reference pool a model ships for ``verify --log`` (``provenance.check.reference_pool``):
the fingerprints (thumbnails) of N clean generations, as ``embed --log`` records them
(``api.logged``), written beside the model's null models. The latent pools that older logs are
checked with (``fingerprint.LATENT_KIND``) were made by this script before thumbnails replaced them.

    python docs/bench/provenance/reference.py --model tiny --images /data/tiny-null -n 1024
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from watermark.api import Generated, logged
from watermark.io.images import to_tensor
from watermark.io.nullfile import null_folders
from watermark.models import get_model
from watermark.provenance.check import reference_name


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--images", required=True, help="clean PNGs of the model, named by seed")
    ap.add_argument("-n", type=int, default=1024)
    args = ap.parse_args()
    model = get_model(args.model)
    files = sorted(Path(args.images).glob("*.png"), key=lambda p: int(p.stem))[: args.n]
    prints = []
    for i in range(0, len(files), 16):
        part = files[i : i + 16]
        made = [Generated(file=f.name, image_id=f.stem, sha256="", seed=int(f.stem), prompt="", key_id=None,
                          model=args.model, watermarked=False, steps=50, guidance=None) for f in part]
        prints += [g.fingerprint for g in logged(made, to_tensor([Image.open(f).convert("RGB") for f in part]))]
    out = null_folders(args.model)[0] / reference_name(model.latent_shape(model.default_size))
    np.save(out, np.stack(prints).astype(np.float16))
    print(f"wrote {out}: {len(prints)} fingerprints from {files[0].name}..{files[-1].name}")


if __name__ == "__main__":
    main()
