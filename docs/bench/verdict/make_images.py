"""Generate clean (or watermarked) model images as PNGs, one seed each: python gen.py MODEL OUT FIRST N [KEYDIR]"""
import sys, os, torch
torch.set_num_threads(1)
from watermark.models import get_model
from watermark.io.images import save_png
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key
model, out, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
wm = len(sys.argv) > 5
m = get_model(model)
shape = m.latent_shape(m.default_size)
os.makedirs(out, exist_ok=True)
B = 8
for i in range(first, first + n, B):
    seeds = [s for s in range(i, min(i + B, first + n)) if not os.path.exists(f"{out}/{s}.png")]
    if not seeds: continue
    if wm:
        zs = []
        for s in seeds:
            key = new_key(model, shape, seed=s + 7)  # image s carries key s+7 (rand, the default pattern)
            zs.append(watermarked_latents(key, seeds=[s]))
        z = torch.cat(zs)
    else:
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    x = m.generate(z, 50)
    for s, img in zip(seeds, x):
        save_png(img, f"{out}/{s}.png")
