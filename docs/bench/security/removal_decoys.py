import sys, numpy as np, torch
from watermark.bench import security as S
from watermark.models import get_model
from watermark.pipeline import recover_noise
from watermark.scheme.keys import new_key, circle_mask, default_radius
from watermark.scheme.embedding import inject
m = get_model("tiny-sd"); shape = m.latent_shape(m.default_size)
key = new_key("tiny-sd", shape, seed=20261201)
v = S.Verify(m, "tiny-sd", [key])
marked = S.generate(m, key, range(8), 10, True)
with torch.no_grad():
    own, _ = recover_noise(m, marked, v.recovery)
mask = circle_mask(shape[1:], default_radius(shape[1], "rand"))
for seed in (1, 2, 3):
    decoy = new_key("tiny-sd", shape, seed=seed)
    target = inject(own.double(), decoy).float()
    out, sec = S.imprint(m, marked, target, v.recovery, 20, mask=mask, checkpoints=(10,))
    print(seed, {k: (float(np.mean(v.p(x) <= 0.01)), float(S.psnr(x, marked).mean())) for k, x in out.items()}, flush=True)
