"""The detection statistic (Tree-Ring's distance, and a p-value for the key's direction, exact for
every key with the model's null model, ``scheme.null``), and matching recovered noise against
several keys. One statistic: ``score`` (one key) and ``match_keys`` (many keys, the geometric
search; what ``verify`` runs) both read ``test_vectors``."""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy import stats

from .calibrated import spread
from .correction import Correction, sidak  # noqa: F401  (sidak: re-exported)
from .embedding import centred_spectrum, centred_window
from .geometry import IDENTITY, Transform, undo
from .keys import Key, independent_mask, key_mask
from .null import NullModel, rings


@dataclass(frozen=True)
class Score:
    p_value: float
    distance: float  # Tree-Ring's mean |F - K| inside the mask
    statistic: float  # Student t (ring, rand, ringid) or F (zeros)
    df: int  # degrees of freedom of the noise-scale estimate


def dof(spectrum: torch.Tensor, key: Key) -> torch.Tensor:
    """The independent real degrees of freedom of a Hermitian spectrum (..., c, H, W) on the key's
    c channels inside its mask, each with variance sigma^2 under white noise of per-bin variance
    sigma^2: sqrt(2) Re and sqrt(2) Im of one bin per conjugate pair, and the real part of each
    self-conjugate bin."""
    h, w = key.latent_shape[1:]
    first, self_conj = independent_mask(key_mask((h, w), key.radius))
    sh, sw = spectrum.shape[-2:]
    if (sh, sw) != (h, w):  # a centred window of the spectrum (``centred_window``)
        first, self_conj = _window(first, sh // 2), _window(self_conj, sh // 2)
    pairs, selfs = spectrum[..., first], spectrum[..., self_conj].real
    return torch.cat([2**0.5 * pairs.real, 2**0.5 * pairs.imag, selfs], dim=-1).flatten(-2)


def _kept_on(key: Key, name: str, make) -> torch.Tensor:
    """``make()``, computed once per key object and kept on it, so it lives as long as the key
    does: no process-wide cache of secret-derived values, none to thrash with many keys."""
    value = key.__dict__.get(name)
    if value is None:
        value = make()
        object.__setattr__(key, name, value)  # a frozen dataclass: not a field, so not compared or saved
    return value


def key_window(key: Key) -> torch.Tensor:
    """(c, 2r+1, 2r+1): the key's values on its channels, in the centred window the test reads."""
    return _kept_on(key, "_window", lambda: _window(key.pattern_values()[list(key.channels)], key.radius))


def _window(x: torch.Tensor, radius: int) -> torch.Tensor:
    """The frequencies -radius..radius of each axis of a centred spectrum (..., H, W)."""
    h, w = x.shape[-2:]
    return x[..., h // 2 - radius : h // 2 + radius + 1, w // 2 - radius : w // 2 + radius + 1]


def test_vectors(z_T: torch.Tensor, keys: list[Key], null: NullModel | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What the test reads, for keys sharing one mask (not ``zeros``): the degrees of freedom z
    (..., d) of each z_T (..., C, H, W) and the keys' unit directions (K, d) in them.

    With a ``null`` model, z_T must already be less its mean (``match_keys`` subtracts it before
    the geometric search); each bin's channel vector, and the keys' values with it, are then
    whitened by the model's S_rho^{-1/2} (``scheme.null``): the optimal direction to test a
    known pattern in coloured Gaussian noise, along which t is exact.
    """
    key = keys[0]
    channels = list(key.channels)
    window = centred_window(z_T, key.radius)[..., channels, :, :]
    k = torch.stack([key_window(k) for k in keys])
    if null is not None:
        window, k = null.whiten(window, key.channels), null.whiten(k, key.channels)
    z, k = dof(window, key), dof(k, key)
    if null is not None:  # then the radially symmetric components, which the bins' whitening misses
        basis = radial_basis(key)
        correct = null.radial_whitener(key.radius, key.channels) - torch.eye(basis.shape[1], dtype=torch.float64)
        z = z + ((z.double() @ basis) @ correct @ basis.T).to(z.dtype)
        k = k + (k @ basis) @ correct @ basis.T
    return z, (k / k.norm(dim=-1, keepdim=True)).float()


def radial_basis(key: Key) -> torch.Tensor:
    """(d, c (radius - 1)): in the key's degrees of freedom (``dof``), the unit vector of the
    radially symmetric pattern (Re F constant) on each channel and ring 2..radius, orthonormal."""
    return _radial_basis(tuple(key.latent_shape[1:]), key.radius, len(key.channels))


@functools.lru_cache(maxsize=64)
def _radial_basis(hw: tuple[int, int], r: int, c: int) -> torch.Tensor:
    first, self_conj = independent_mask(key_mask(hw, r))
    ring = rings(hw)[0][first]  # the ring of each pair, in dof order
    per_channel = 2 * len(ring) + int(self_conj.sum())
    basis = torch.zeros(c * per_channel, c * (r - 1), dtype=torch.float64)
    for ci in range(c):
        for rho in range(2, r + 1):
            on = (ring == rho).nonzero()[:, 0]
            basis[ci * per_channel + on, ci * (r - 1) + rho - 2] = len(on) ** -0.5
    return basis


def score(z_T: torch.Tensor, key: Key, null: NullModel | None = None, test: str = "calibrated") -> list[Score]:
    """Test each recovered z_T (B, C, H, W) against ``key``; small p = evidence of the key.

    ``ring``, ``ringid`` and ``rand``: the d independent real degrees of freedom z of the mask
    (one bin of each conjugate pair, Re and Im, on each channel; ``test_vectors``) are split
    along the key k: a = <z, k/|k|>, and the d - 1 directions orthogonal to it, whose mean
    square s^2 estimates the noise scale. Without the watermark, z does not depend on the key,
    and if z is white inside the mask (any scale), t = a / s follows Student's t with d - 1
    degrees of freedom: p = P(T >= t). With the watermark, a ~ |k| while the orthogonal part
    stays noise. Recovered z_T is not white; with the ``null`` model of the model and recovery
    that made it (``scheme.null``), z and k are whitened first and t is exact for every key;
    without one it is exact only on average over keys (docs/concepts/test.md).

    Tree-Ring's non-central chi^2 on |k - z|^2 / sigma^2 needs sigma from elsewhere in the
    spectrum, and recovered z_T is not white there; estimating the scale inside the mask keeps
    only the term |k - z|^2 carries the key in, and lets the scale cancel.

    ``zeros`` has no direction: F = (mean z^2 inside the mask) / (mean z^2 on the annulus
    radius < |f| <= 2 radius), p = P(F(d, d_ref) <= F), d and d_ref the degrees of freedom of the two. It assumes the spectrum is flat across
    the two regions, which recovered z_T is not: it is not calibrated (docs/concepts/test.md), and takes no
    null model.
    """
    spectrum = centred_spectrum(z_T.float())
    mask, keyvals = key.mask(), key.pattern_values()
    distance = (spectrum[:, mask] - keyvals[mask]).abs().mean(-1)
    if key.pattern == "zeros":
        channels = spectrum[:, list(key.channels)]
        z = dof(channels, key)
        annulus = replace(key, radius=2 * key.radius)  # off the axes, as the mask
        ref = dof(channels, annulus)[:, _outside(key)]
        d, df = z.shape[-1], ref.shape[-1]
        stat = z.pow(2).mean(-1) / ref.pow(2).mean(-1).clamp_min(1e-24)
        p = stats.f.cdf(stat.numpy(), d, df)
    else:
        t, df = statistics(centred(z_T, null)[:, None], [key], null, test)
        stat = t[:, 0, 0]
        p = stats.t.sf(stat.numpy(), df)
    return [Score(p_value=float(np.clip(p[b], 0.0, 1.0)), distance=float(distance[b]), statistic=float(stat[b]),
                  df=df) for b in range(len(z_T))]


def centred(z_T: torch.Tensor, null: NullModel | None) -> torch.Tensor:
    """z_T (float32) less the null model's mean, if there is one."""
    return z_T.float() if null is None else z_T.float() - null.mean().float()


def _outside(key: Key) -> torch.Tensor:
    """Of the degrees of freedom of the key at twice its radius, those outside its own mask."""
    hw = tuple(key.latent_shape[1:])
    first, self_conj = independent_mask(key_mask(hw, 2 * key.radius))
    inner = key_mask(hw, key.radius)
    one = torch.cat([~inner[first], ~inner[first], ~inner[self_conj]])
    return one.repeat(len(key.channels))


def direction(key: Key) -> torch.Tensor:
    """The key's unit vector k/|k| in its degrees of freedom (``dof``), unwhitened: how alike
    two keys' patterns are."""
    def make():
        k = dof(key.pattern_values()[list(key.channels)], key)
        return k / k.norm()

    return _kept_on(key, "_direction", make)


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


TESTS = ("calibrated", "whitened")  # what a null model does to the test (``calibrated``; ``NullModel.whiten``)
DEFAULT_TEST = "calibrated"  # BENCHMARKS.md, "One verification path": exact per key without the power whitening cost


def corrected(p: float, keys: int, transforms: int) -> float:
    """The p-value of the best of ``keys`` x ``transforms`` tests (``Correction.p``, one look)."""
    return Correction(keys=keys, transforms=transforms).p(p)


@dataclass(frozen=True, kw_only=True)
class KeyMatch:
    key_id: str
    p_value: float  # corrected (``correction``)
    distance: float
    raw_p_value: float
    transform: str  # the geometric transform undone ("identity" without a search)
    correction: Correction  # the keys, transforms and looks p_value is corrected for
    runner_up_p_value: float = 1.0  # the second-best key's, corrected as p_value (1 with one key)
    statistic: float = float("nan")  # the best key's test statistic: Student t (F for zeros)
    df: int = 0  # its degrees of freedom (the noise-scale estimate's)

    @property
    def keys_tested(self) -> int:
        return self.correction.keys

    @property
    def transforms_tested(self) -> int:
        return self.correction.transforms


def _tag(key: Key) -> tuple:
    return key.radius, tuple(key.channels), tuple(key.latent_shape)


def _groups(keys: list[Key]) -> dict:
    """Keys sharing a mask (radius, channels, shape), scored together; ``zeros`` keys alone."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(("zeros", i) if key.pattern == "zeros" else _tag(key), []).append(i)
    return groups


def statistics(z_T: torch.Tensor, keys: list[Key], null: NullModel | None = None,
               test: str = DEFAULT_TEST, transforms: list[Transform] | None = None) -> tuple[torch.Tensor, int]:
    """Student t of every key (sharing one mask, not ``zeros``) on every latent (B, T, C, H, W)
    under ``transforms`` (T of them; default the identity), already less the null model's mean if
    one is given: (t (B, T, K), degrees of freedom). With a ``null``, the ``test`` says how it is
    made exact per key: ``calibrated``, t divided by its spread on the null's z_T (``calibrated``),
    or ``whitened`` (``test_vectors``)."""
    if test not in TESTS:
        raise ValueError(f"test must be one of {TESTS}, got {test!r}")
    calibrate = null is not None and test == "calibrated"
    z, k_hat = test_vectors(z_T, keys, None if calibrate else null)  # (B, T, d), (K, d)
    t, _ = t_statistic(z, k_hat)
    if calibrate:
        t = t / spread(null, keys, transforms or [IDENTITY])[None]
    return t, z.shape[-1] - 1


def match_keys(z_T: torch.Tensor, keys: list[Key], transforms: list[Transform] | None = None,
               null: NullModel | None = None, *, looks: int = 1, test: str = DEFAULT_TEST) -> list[KeyMatch]:
    """For each z_T (B, C, H, W), the best of ``keys`` under the best of ``transforms`` (default:
    none), with its p-value corrected for all the tests and for ``looks`` looks at the image
    (``correction``). ``null``: the null model of the recovery that made z_T (``scheme.null``);
    its mean is subtracted before the transforms, its ``test`` applied after them.

    Keys that share a mask are scored in one matrix product over all transforms; ``zeros`` keys,
    which have no direction, are tested without a search."""
    transforms = transforms or [IDENTITY]
    warped = undo(centred(z_T, null), transforms)  # (B, T, C, H, W)
    b_size, n_t = warped.shape[:2]
    # per image and key: (p Bonferroni-corrected for the transforms the key was tested under, -t,
    # key index, transform index, raw p, transforms tested, degrees of freedom); a zeros key is tested under one
    found: list[list[tuple]] = [[] for _ in range(b_size)]
    for tag, members in _groups(keys).items():
        group = [keys[i] for i in members]
        if tag[0] == "zeros":
            for b, s in enumerate(score(z_T, group[0])):
                found[b].append((s.p_value, -s.statistic, members[0], 0, s.p_value, 1, s.df))
            continue
        t, df = statistics(warped, group, null, test, transforms)  # (B, T, K)
        t_max, arg = t.max(1)  # each key's best transform
        top = t_max.topk(min(2, len(group)), dim=1)  # the two best keys of the group are all the ranking needs
        for b in range(b_size):
            for v, ki in zip(top.values[b].tolist(), top.indices[b].tolist()):
                p = float(stats.t.sf(v, df))
                found[b].append((min(1.0, n_t * p), -v, members[ki], int(arg[b, ki]), p, n_t, df))
    out = []
    for b in range(b_size):
        ranked = sorted(found[b])
        _, neg_t, ki, ti, p, tested, df = ranked[0]
        key = keys[ki]
        mask = key.mask()
        distance = float((centred_spectrum(warped[b, ti])[mask] - key.pattern_values()[mask]).abs().mean())
        p = float(np.clip(p, 0.0, 1.0))
        correction = Correction(keys=len(keys), transforms=tested, looks=looks)
        runner_up = replace(correction, transforms=ranked[1][5]).p(ranked[1][4]) if len(ranked) > 1 else 1.0
        out.append(KeyMatch(key_id=key.key_id, p_value=correction.p(p), distance=distance, raw_p_value=p,
                            transform=transforms[ti].name, correction=correction, runner_up_p_value=runner_up,
                            statistic=-neg_t, df=df))
    return out
