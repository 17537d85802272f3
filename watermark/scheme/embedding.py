"""Writing a key into the Fourier transform of the initial noise z_T.

``watermarked_latents`` is the public entry point: watermarked z_T to pass as ``latents=`` to a
diffusers pipeline (``ringmark embed`` and the model adapters use it too).
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch

from .keys import Key


def centred_spectrum(z: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D FFT of the last two dims, zero frequency at the centre (complex128).

    The spatial origin is the centre of the latent too (``ifftshift`` before the transform):
    a real constant on a ring then stands for a radially symmetric pattern centred in the
    image, away from the borders where zero padding leaves the networks' artefacts, and it
    survives a centre crop and a rotation about the centre better (docs/concepts/scheme.md).
    """
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(z.double(), dim=dims), norm="ortho"), dim=dims)


def centred_window(z: torch.Tensor, radius: int) -> torch.Tensor:
    """``centred_spectrum(z)`` on the frequencies -radius..radius of each axis only, (..., 2r+1, 2r+1)
    complex64: two small DFT matrices instead of the whole FFT, which is what the test reads
    (``torch.fft`` has no pruned transform). The DFT's real and imaginary rows are stacked so that
    a real z takes two real matrix products, not two complex ones on a complex copy of it."""
    h, w = z.shape[-2:]
    rows, cols = _dft(h, radius).to(z.device), _dft(w, radius).T.to(z.device)  # (2m, H), (W, 2m): [Re; Im], [Re, Im]
    m = 2 * radius + 1
    if z.is_complex():
        return _complex(rows, m) @ z.to(torch.complex64) @ _complex(cols.T, m).T
    p = rows @ z.float() @ cols  # (..., 2m, 2m): the blocks [aR aI; bR bI] of (a + ib)(R + iI)
    a_r, a_i, b_r, b_i = p[..., :m, :m], p[..., :m, m:], p[..., m:, :m], p[..., m:, m:]
    return torch.complex(a_r - b_i, a_i + b_r)


@functools.lru_cache(maxsize=32)
def _dft(n: int, radius: int) -> torch.Tensor:
    """(2 (2r+1), n) float32: the real rows, then the imaginary rows, of the orthonormal DFT on
    frequencies -r..r with the spatial origin at the centre."""
    f = torch.arange(-radius, radius + 1, dtype=torch.float64)[:, None]
    x = torch.arange(n, dtype=torch.float64)[None, :] - n // 2
    angle = -2 * torch.pi * f * x / n
    return (torch.cat([angle.cos(), angle.sin()]) / n**0.5).float()


def _complex(stacked: torch.Tensor, m: int) -> torch.Tensor:
    return torch.complex(stacked[:m], stacked[m:])


def real_signal(spectrum: torch.Tensor) -> torch.Tensor:
    """The inverse of ``centred_spectrum`` for a Hermitian spectrum (float64)."""
    dims = (-2, -1)
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=dims), norm="ortho"), dim=dims).real


def inject(z_T: torch.Tensor, key: Key) -> torch.Tensor:
    """Replace the spectrum of the key's channels inside its mask by the key's values (of each
    latent frame of clips (B, C, F, H, W)).

    The values are Hermitian-consistent, so the inverse transform is real to rounding and
    taking ``.real`` loses nothing; an orthonormal FFT keeps z_T's N(0, I) statistics.
    """
    if z_T.dim() == 5:  # clips (B, C, F, H, W): the key goes into every latent frame's spectrum
        b, c, f, h, w = z_T.shape
        frames = inject(z_T.transpose(1, 2).reshape(b * f, c, h, w), key)
        return frames.reshape(b, f, c, h, w).transpose(1, 2).contiguous()
    if tuple(z_T.shape[1:]) != tuple(key.latent_shape):
        raise ValueError(f"noise shape {tuple(z_T.shape[1:])} does not fit the key's {key.latent_shape}")
    channels = list(key.channels)
    mask, values = key.mask()[channels], key.pattern_values()[channels]
    spectrum = centred_spectrum(z_T[:, channels])
    spectrum[:, mask] = values[mask]
    z = z_T.clone()
    z[:, channels] = real_signal(spectrum).to(z.dtype)
    return z


def watermarked_latents(
    key: Key,
    batch_size: int | None = None,
    *,
    seeds: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    watermark: bool = True,
    frames: int | None = None,
) -> torch.Tensor:
    """Initial noise z_T (B, C, H, W) ~ N(0, I) carrying ``key``, for ``latents=`` of a pipeline;
    with ``frames`` (latent frames of a video model), clips (B, C, F, H, W) with the key in every frame.

    ``seeds``: one CPU generator per seed, so an image's noise does not depend on its batch
    (what ``ringmark embed`` does); else ``batch_size`` draws from ``generator`` (a
    ``torch.Generator`` on any device). The key is written in float64 on
    the CPU, then the noise moves to ``device`` and ``dtype``. ``watermark=False`` gives the same
    noise without the key (clean controls). diffusers pipelines scale given latents by their
    scheduler's ``init_noise_sigma`` themselves, so unit variance suits every scheduler.
    """
    c, h, w = key.latent_shape
    shape = key.latent_shape if frames is None else (c, frames, h, w)
    if seeds is not None:
        seeds = list(seeds)
        if not seeds:
            raise ValueError("no seeds given")
        if batch_size is not None and batch_size != len(seeds):
            raise ValueError(f"batch_size {batch_size} does not match {len(seeds)} seeds")
        if generator is not None:
            raise ValueError("give seeds or a generator, not both")
        z = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    else:
        if generator is None:
            raise ValueError("give seeds or a torch.Generator: the noise is never drawn from the global RNG")
        if batch_size is None or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        z = torch.randn((batch_size, *shape), generator=generator, device=generator.device).cpu()
    z = inject(z, key) if watermark else z
    return z.to(device=device, dtype=dtype)
