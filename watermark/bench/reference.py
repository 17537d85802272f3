"""The seed paper's reference implementation of gradient-free decoder inversion, re-stated line by
line for the side-by-side of ``ringmark bench inversion``: ``decoder_inv_nograd`` of
smhongok/dec-inv (src/stable_diffusion/inverse_stable_diffusion.py, commit 9178dfa), with the
helpers it calls. Its own file cannot run here as it stands (it is a method of a diffusers
pipeline subclass with SD's hard-coded latent scale 0.18215), so each line below says which line
of the reference it is; nothing is changed but the VAE it is given and that VAE's latent scale.

The branch re-stated is ``float=True``, the one the paper's watermark experiment calls
(main_watermark_detection.py:163, ``decoder_inv_nograd(img_w, num_steps=..., float=True,
LR_scheduling=True)``, Adam, lr 0.01). As written it samples the posterior at every encoding
(``get_image_latents(image, sample=True)``) and deep-copies the VAE to float32 at every encoding
and decoding; ``sample=False`` is the same code with the posterior mean, as ringmark encodes.
"""

from __future__ import annotations

import copy
import math

import torch


def get_lr_cosine_with_warmup(i, num_steps=100, num_warmup_steps=10, lr_max=0.01):  # l. 687-693
    assert i >= 0 and i < num_steps
    if i < num_warmup_steps:
        lr = (i + 1) / num_warmup_steps * lr_max
    else:
        lr = lr_max * (1 + math.cos(math.pi * (i - num_warmup_steps) / (num_steps - num_warmup_steps))) / 2
    return lr


class Reference:
    """The pipeline methods ``decoder_inv_nograd`` calls, on ``vae`` (a diffusers AutoencoderKL)."""

    def __init__(self, vae, sample: bool = True, generator: torch.Generator | None = None):
        self.vae, self.sample, self.generator = vae, sample, generator
        self.scale = vae.config.scaling_factor  # the reference: 0.18215 (SD's)

    def get_image_latents(self, image):  # l. 79-86
        encoding_dist = self.vae.encode(image).latent_dist
        encoding = encoding_dist.sample(generator=self.generator) if self.sample else encoding_dist.mode()
        return encoding * self.scale

    def get_image_latents_float(self, image):  # l. 89-97
        vae = copy.deepcopy(self.vae).float()
        encoding_dist = vae.encode(image).latent_dist
        encoding = encoding_dist.sample(generator=self.generator) if self.sample else encoding_dist.mode()
        return encoding * self.scale

    def decode_image(self, latents, float=False):  # l. 100-112
        scaled_latents = 1 / self.scale * latents
        vae = copy.deepcopy(self.vae).float() if float else self.vae
        image = [vae.decode(scaled_latents[i : i + 1]).sample for i in range(len(latents))]
        return torch.cat(image, dim=0)

    @torch.inference_mode()
    def decoder_inv_nograd(self, x, num_steps=100, num_warmup_steps=None, lr=0.01, adam=True, LR_scheduling=True,
                           callback=None):  # l. 542-631, the float=True branch (l. 602-629)
        """``callback(i, z)`` after each iteration: ringmark's addition, for the side-by-side's clock."""
        num_steps_cutoff = 100 if num_steps > 100 else num_steps
        if num_warmup_steps is None:
            num_warmup_steps = num_steps_cutoff // 10
        if adam:
            beta1, beta2 = 0.9, 0.999
            eps = 1e-8
            m, v = 0, 0
        z0 = self.get_image_latents(x).float()
        z = z0.clone().float()
        for i in range(num_steps):
            Dz = self.decode_image(z, float=True)
            EDz = self.get_image_latents_float(Dz)
            grad = EDz - z0
            if adam:
                if LR_scheduling:
                    if i < 0.8 * num_steps_cutoff:
                        lr_now = get_lr_cosine_with_warmup(i, num_steps=num_steps_cutoff,
                                                           num_warmup_steps=num_warmup_steps, lr_max=lr)
                        lr_min = lr_now
                    else:
                        lr_now = lr_min
                else:
                    lr_now = lr
                m = beta1 * m + (1 - beta1) * grad
                v = beta2 * v + (1 - beta2) * (grad**2)
                m_corr = m / (1 - beta1 ** (i + 1))
                v_corr = v / (1 - beta2 ** (i + 1))
                z -= lr_now * m_corr / (torch.sqrt(v_corr) + eps)
            else:
                z -= lr * grad
            if callback is not None:
                callback(i, z)
        return z
