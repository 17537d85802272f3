"""Which logged generation is this? Its seed's noise, outside the key.

Every generation under a key shares the key's frequencies of z_T; everywhere else z_T is the
seed's own N(0, I) draw (``embedding.watermarked_latents``, one generator per seed), which the log
can rebuild from the seed it records. Recovery brings that noise back with the key, so the
residual P z_T — z_T with the key's masked frequencies set to zero, an orthogonal projection of
rank d — names the generation (how often, under which edits: ``ringmark bench security``'s
provenance rows, "turned down: seed noise").

The test is exact: for a suspect's residual u and a logged seed's residual g = P n, n ~ N(0, I)
drawn independently of the suspect (any image not made from that seed), g is isotropic in the
d-dimensional range of P, so the cosine c of u and g has (1 + c) / 2 ~ Beta((d - 1) / 2, (d - 1) / 2)
whatever u is. Its p-value is that law's survival function at the observed cosine, corrected
(Bonferroni) for the seeds and transforms compared. What it does not tell: whether the content is
that generation's (a forger who imprints a genuine image's whole z_T on other content copies the
seed's noise too); ``provenance.check`` tests the content next.
"""

from __future__ import annotations

import math

import torch
from scipy import stats

from ..scheme.embedding import centred_spectrum, centred_window, real_signal, watermarked_latents
from ..scheme.geometry import Transform, compose, mirrored, undo_each
from ..scheme.keys import Key

TILT = 20.0  # degrees: the turns ``candidates`` composes with crops


def residual(z_T: torch.Tensor, key: Key) -> torch.Tensor:
    """P z_T: (B, C, H, W) -> (B, C * H * W) float64, the key's masked frequencies set to zero
    (``embedding.inject`` with zeros: the same orthonormal spectrum)."""
    channels = list(key.channels)
    spectrum = centred_spectrum(z_T[:, channels].double())
    spectrum[:, key.mask()[channels]] = 0
    z = z_T.double().clone()
    z[:, channels] = real_signal(spectrum).double()
    return z.flatten(1)


def rank(key: Key) -> int:
    """d, the dimension of P's range."""
    c, h, w = key.latent_shape
    return c * h * w - int(key.mask()[list(key.channels)].sum())


def seeds_residual(key: Key, seeds: list[int]) -> torch.Tensor:
    """The residuals (m, C * H * W) of the noise ``embed`` drew for ``seeds``, unit length."""
    g = residual(watermarked_latents(key, seeds=seeds, watermark=False), key)
    return g / g.norm(dim=1, keepdim=True)


def cosines(z_T: torch.Tensor, key: Key, logged: torch.Tensor, transforms: list[Transform]) -> torch.Tensor:
    """The best cosine over ``transforms`` (undone from the suspect's z_T (C, H, W)) between its
    residual and each logged seed's (``seeds_residual``, (m, n)) -> (m,)."""
    return aligned(z_T, key, logged, transforms)[0]


def aligned(z_T: torch.Tensor, key: Key, logged: torch.Tensor,
            transforms: list[Transform]) -> tuple[torch.Tensor, torch.Tensor]:
    """``cosines`` and, for each logged seed, the index of the transform that gave it: (m,), (m,).
    P is an orthogonal projection and each logged g = P g, so <P z, g> = <z, g>, and ||P z||^2 is
    ||z||^2 less the energy of z's masked frequencies (``masked_energy``): no FFT of the (many)
    undone latents, only the few frequencies of the key's window."""
    z = undo_each(z_T[None].expand(len(transforms), *z_T.shape).float(), transforms)
    norm = (z.flatten(1).square().sum(1).double() - masked_energy(z, key)).clamp_min(1e-24).sqrt()
    return ((z.flatten(1) @ logged.float().T).double() / norm[:, None]).max(0)


def masked_energy(z: torch.Tensor, key: Key) -> torch.Tensor:
    """||(I - P) z||^2 for latents (B, C, H, W) -> (B,) float64: the energy of the key's masked
    frequencies of its channels, read on the window of frequencies -radius..radius that holds the
    mask (``centred_window``). The mask is symmetric about the zero frequency, so the part P
    removes is real and the orthonormal transform keeps its energy."""
    channels, (h, w), r = list(key.channels), z.shape[-2:], key.radius
    window = centred_window(z[:, channels], r)  # (B, c, 2r+1, 2r+1)
    mask = key.mask()[channels][:, h // 2 - r : h // 2 + r + 1, w // 2 - r : w // 2 + r + 1]
    return (window.abs().double() ** 2 * mask).flatten(1).sum(1)


def candidates(grid: list[Transform]) -> list[Transform]:
    """The seed test's transforms: the key search's ``grid`` and each of its rotations within
    ``TILT`` of upright composed with each of its two-sided crops (a turn, then a crop: the pair a
    user straightening a picture makes, which neither alone undoes), mirrored too where the grid
    is. The seed's noise fills the whole latent, so it is matched far more strongly than the key's
    ring (cosines of 0.4 on `tiny` after a 10-degree turn, an 85 % crop and JPEG 60, where 0.06
    is the 1 % level), and the correction for the candidates costs it little."""
    def tilt(t: Transform) -> float:
        (a, b, _), _ = t.matrix
        return abs(math.degrees(math.atan2(b, a)))

    turns = [t for t in grid if t.name.startswith("rotation ") and tilt(t) <= TILT]
    crops = [t for t in grid if t.name.startswith("crop xy ")]
    both = [compose(r, c) for r in turns for c in crops]
    if any(t.name == "mirror" for t in grid):
        both += [mirrored(t) for t in both]
    return grid + both


def p_value(cosine: float, d: int, compared: int) -> float:
    """P(a cosine >= ``cosine`` among ``compared`` independent seed-transform pairs) <= compared x
    the Beta survival function (Bonferroni)."""
    return min(1.0, compared * float(stats.beta.sf((1 + cosine) / 2, (d - 1) / 2, (d - 1) / 2)))
