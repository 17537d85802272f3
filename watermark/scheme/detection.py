"""The detection statistic (Tree-Ring's distance, and a calibrated p-value for the key's direction),
and matching recovered noise against several keys."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats

from .embedding import centred_spectrum, centred_window
from .geometry import IDENTITY, Transform, undo
from .keys import Key, independent_mask, key_mask


@dataclass(frozen=True)
class Score:
    p_value: float
    distance: float  # Tree-Ring's mean |F - K| inside the mask
    sigma: float  # the noise scale estimated inside the mask
    statistic: float  # Student t (ring, rand, ringid) or F (zeros)
    df: int  # degrees of freedom of the noise-scale estimate


def dof(spectrum: torch.Tensor, key: Key) -> torch.Tensor:
    """The independent real degrees of freedom of a Hermitian spectrum (..., C, H, W) inside the
    key's mask, each with variance sigma^2 under white noise of per-bin variance sigma^2:
    sqrt(2) Re and sqrt(2) Im of one bin per conjugate pair, and the real part of each
    self-conjugate bin, on each of the key's channels."""
    h, w = key.latent_shape[1:]
    first, self_conj = independent_mask(key_mask((h, w), key.radius))
    sh, sw = spectrum.shape[-2:]
    if (sh, sw) != (h, w):  # a centred window of the spectrum (``centred_window``)
        first = first[h // 2 - sh // 2 : h // 2 + sh // 2 + 1, w // 2 - sw // 2 : w // 2 + sw // 2 + 1]
        self_conj = self_conj[h // 2 - sh // 2 : h // 2 + sh // 2 + 1, w // 2 - sw // 2 : w // 2 + sw // 2 + 1]
    x = spectrum[..., list(key.channels), :, :]
    pairs, selfs = x[..., first], x[..., self_conj].real
    return torch.cat([2**0.5 * pairs.real, 2**0.5 * pairs.imag, selfs], dim=-1).flatten(-2)


def score(z_T: torch.Tensor, key: Key) -> list[Score]:
    """Test each recovered z_T (B, C, H, W) against ``key``; small p = evidence of the key.

    ``ring``, ``ringid`` and ``rand``: the d independent real degrees of freedom z of the mask
    (one bin of each conjugate pair, Re and Im, on each channel) are split along the key k:
    a = <z, k/|k|>, and the d - 1 directions orthogonal to it, whose mean square s^2
    estimates the noise scale. Without the watermark, z does not depend on the key, and if z is
    white inside the mask (any scale), t = a / s follows Student's t with d - 1 degrees of
    freedom: p = P(T >= t). With the watermark, a ~ |k| while the orthogonal part stays noise.

    Tree-Ring's non-central chi^2 on |k - z|^2 / sigma^2 needs sigma from elsewhere in the
    spectrum, and recovered z_T is not white there; estimating the scale inside the mask keeps
    only the term |k - z|^2 carries the key in, and lets the scale cancel. The false-positive
    rates that led here are in README.md ("The test and its p-value");
    ``tests/test_calibration*.py`` check them.

    ``zeros`` has no direction: F = (mean z^2 inside the mask) / (mean z^2 on the annulus
    radius < |f| <= 2 radius), p = P(F(d, m) <= F). It assumes the spectrum is flat across
    the two regions, which recovered z_T is not: it is not calibrated (README).
    """
    spectrum = centred_spectrum(z_T.float())
    mask, keyvals = key.mask(), key.pattern_values()
    z = dof(spectrum, key)
    distance = (spectrum[:, mask] - keyvals[mask]).abs().mean(-1)
    d = z.shape[-1]
    if key.pattern == "zeros":
        annulus = replace(key, radius=2 * key.radius)  # off the axes, as the mask
        ref = dof(spectrum, annulus)[:, _outside(key)]
        m = ref.shape[-1]
        sigma = ref.pow(2).mean(-1).sqrt()
        stat = z.pow(2).mean(-1) / sigma.pow(2).clamp_min(1e-24)
        p = stats.f.cdf(stat.numpy(), d, m)
    else:
        t, sigma = t_statistic(z, direction(key)[None])
        stat, m = t[..., 0], d - 1
        sigma = sigma[..., 0]
        p = stats.t.sf(stat.numpy(), m)
    return [Score(float(np.clip(p[b], 0.0, 1.0)), float(distance[b]), float(sigma[b]), float(stat[b]), m)
            for b in range(len(z_T))]


def _outside(key: Key) -> torch.Tensor:
    """Of the degrees of freedom of the key at twice its radius, those outside its own mask."""
    hw = tuple(key.latent_shape[1:])
    first, self_conj = independent_mask(key_mask(hw, 2 * key.radius))
    inner = key_mask(hw, key.radius)
    one = torch.cat([~inner[first], ~inner[first], ~inner[self_conj]])
    return one.repeat(len(key.channels))


@functools.lru_cache(maxsize=8192)
def direction(key: Key) -> torch.Tensor:
    """The key's unit vector k/|k| in its degrees of freedom (``dof``)."""
    k = dof(key.pattern_values(), key)
    return k / k.norm()


def t_statistic(z: torch.Tensor, k_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t = a / s for each z (..., d) and each unit key (K, d) -> (t, s), both (..., K); see ``score``.

    The orthogonal part's sum of squares is |z|^2 - a^2, so every key costs one dot product.
    """
    a = z.double() @ k_hat.double().T
    s = ((z.double().pow(2).sum(-1, keepdim=True) - a.pow(2)).clamp_min(0) / (z.shape[-1] - 1)).sqrt()
    return a / s.clamp_min(1e-12), s


def nearest(key: Key, keys: list[Key]) -> tuple[float, Key]:
    """The key of ``keys`` most similar to ``key``, and the similarity |cos| of their patterns: the
    share of one key's statistic that an image carrying the other shows (the same key: 1; keys
    on other masks or ``zeros``: 0, as they share no direction the test looks along)."""
    sims = np.zeros(len(keys))
    same = [i for i, k in enumerate(keys) if _tag(k) == _tag(key) and k.pattern != "zeros"]
    if same and key.pattern != "zeros":
        sims[same] = (torch.stack([direction(keys[i]) for i in same]) @ direction(key)).abs().numpy()
    sims[[i for i, k in enumerate(keys) if k.key_id == key.key_id]] = 1.0
    best = int(np.argmax(sims))
    return float(sims[best]), keys[best]


def sidak(p: float, m: int) -> float:
    """Šidák correction of the smallest of m independent p-values: 1 - (1 - p)^m."""
    return float(-np.expm1(m * np.log1p(-p))) if p < 1 else 1.0


def corrected(p: float, keys: int, transforms: int) -> float:
    """The p-value of the best of ``keys`` x ``transforms`` tests: Bonferroni over the transforms
    (the same image under nearby transforms gives dependent tests, which Bonferroni allows), then
    Šidák over the keys (independent directions)."""
    return sidak(min(1.0, transforms * p), keys)


@dataclass(frozen=True)
class KeyMatch:
    key_id: str
    p_value: float  # corrected for the keys and transforms tested
    distance: float
    raw_p_value: float
    keys_tested: int
    transform: str  # the geometric transform undone ("identity" without a search)
    transforms_tested: int


def _tag(key: Key) -> tuple:
    return key.radius, tuple(key.channels), tuple(key.latent_shape)


def _groups(keys: list[Key]) -> dict:
    """Keys sharing a mask (radius, channels, shape), scored together; ``zeros`` keys alone."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(("zeros", i) if key.pattern == "zeros" else _tag(key), []).append(i)
    return groups


def statistics(z_T: torch.Tensor, keys: list[Key]) -> tuple[torch.Tensor, int]:
    """Student t of every key (sharing one mask, not ``zeros``) on every latent (B, T, C, H, W):
    (t (B, T, K), degrees of freedom)."""
    z = dof(centred_window(z_T, keys[0].radius), keys[0])  # (B, T, d)
    t, _ = t_statistic(z, torch.stack([direction(k) for k in keys]))
    return t, z.shape[-1] - 1


def match_keys(z_T: torch.Tensor, keys: list[Key], transforms: list[Transform] | None = None) -> list[KeyMatch]:
    """For each z_T (B, C, H, W), the best of ``keys`` under the best of ``transforms`` (default:
    none), with its p-value corrected for all the tests (``corrected``).

    Keys that share a mask are scored in one matrix product over all transforms; ``zeros`` keys,
    which have no direction, are tested without a search."""
    transforms = transforms or [IDENTITY]
    warped = undo(z_T.float(), transforms)  # (B, T, C, H, W)
    b_size, n_t = warped.shape[:2]
    # per image: (p Bonferroni-corrected for the transforms its key was tested under, -t, key
    # index, transform index, raw p, transforms tested); a zeros key is tested under one
    best = [(np.inf, -np.inf, 0, 0, 1.0, n_t)] * b_size
    for tag, members in _groups(keys).items():
        group = [keys[i] for i in members]
        if tag[0] == "zeros":
            for b, s in enumerate(score(z_T, group[0])):
                best[b] = min(best[b], (s.p_value, -s.statistic, members[0], 0, s.p_value, 1))
            continue
        t, df = statistics(warped, group)
        t_max, arg = t.flatten(1).max(1)
        p = stats.t.sf(t_max.numpy(), df)
        for b in range(b_size):
            ti, ki = divmod(int(arg[b]), len(group))
            best[b] = min(best[b], (min(1.0, n_t * float(p[b])), -float(t_max[b]), members[ki], ti, float(p[b]), n_t))
    out = []
    for b, (_, _, ki, ti, p, tested) in enumerate(best):
        key = keys[ki]
        mask = key.mask()
        distance = float((centred_spectrum(warped[b, ti])[mask] - key.pattern_values()[mask]).abs().mean())
        p = float(np.clip(p, 0.0, 1.0))
        out.append(KeyMatch(key.key_id, corrected(p, len(keys), tested), distance, p, len(keys),
                            transforms[ti].name, tested))
    return out
