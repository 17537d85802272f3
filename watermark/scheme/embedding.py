"""Writing a key into the Fourier transform of the initial noise z_T.

``watermarked_latents`` is the public entry point: watermarked z_T to pass as ``latents=`` to a
diffusers pipeline (``ringmark embed`` and the model adapters use it too).
"""

from __future__ import annotations

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
    (``torch.fft`` has no pruned transform)."""
    h, w = z.shape[-2:]

    def dft(n: int) -> torch.Tensor:
        f = torch.arange(-radius, radius + 1, dtype=torch.float64)[:, None]
        m = torch.arange(n, dtype=torch.float64)[None, :] - n // 2  # the spatial origin at the centre
        return (torch.polar(torch.ones(()).double(), -2 * torch.pi * f * m / n) / n**0.5).to(torch.complex64)

    return dft(h) @ z.to(torch.complex64) @ dft(w).T


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
