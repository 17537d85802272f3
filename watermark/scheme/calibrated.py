"""The calibrated test: Tree-Ring's key direction read in the recovered z_T as it is (not
whitened), its Student t divided by its own spread on clean images, per key and per transform.

Recovered z_T is not white noise, so t = a / s (``detection.t_statistic``) is not Student's t for
a given key: a = <z, k/|k|> has variance k^T S k / |k|^2 under the null, s^2 estimates the mean
variance tr S / d. For each key k and transform T the null model's stored z_T samples give both
(z less the null mean, then T undone, as the test reads them):

    sigma^2_{k,T} = mean_n <U_T (z_n - m), k_hat>^2      (the samples' spread along the key)
    sbar^2_T      = mean_n |U_T (z_n - m)|^2 / d          (the scale s estimates, on a subsample)
    kappa^2_{k,T} = sigma^2 (d - 1) / (d sbar^2 - sigma^2)

and t / kappa is, under the null, Student's t with d - 1 degrees of freedom to the accuracy of
the samples (``tests/test_null_model.py``: coloured noise of known covariance). The mean is
subtracted before the transform, so the transformed z_T needs no model of its own.

"To the accuracy of the samples" is the catch: from N samples kappa is off by about
sqrt(2 / N) / 2 (2.2 % at N = 1,024; 6 % at 144), and an understated kappa makes the key liberal.
The error is shared by keys alike (all one-channel ring keys on a channel live in its r - 1
radial directions; all keys of a mask share sbar^2), so a few keys of a model can be liberal by
more than chance (tiny-flow, issue 34). The test divides by the upper end of kappa's one-sided
``CONFIDENCE`` interval instead, kappa (1 + z se), se = sqrt(se(sigma^2)^2 + se(sbar^2)^2) / 2
(relative standard errors from the samples' own scatter; taken as independent, which overstates se:
both rise with an image's energy): each key's p-value is then valid (conservative) for all but
about 1 - CONFIDENCE of the null models one could have drawn, at a cost in power of that factor
on t (about 4 % at N = 1,024; BENCHMARKS.md, "The null model's own error").

The key's component a is linear in z: a_{k,T}(z) = <z, w_{k,T}>, w_{k,T} = U_T^T P^T k_hat (P: the
test's degrees of freedom, ``detection.dof``). autograd gives every w of a key in one backward
pass over T latents, so a key costs T latent passes and one (N x CHW) @ (CHW x T) product, not N x T
transforms. Whitening instead (``NullModel.whiten``) is the optimal direction for the unedited
mark, but it is fitted on untransformed z_T and weights the spectrum by the clean images' power,
which edits change; BENCHMARKS.md ("One verification path") compares the two on both axes.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import torch
from scipy import stats

from .geometry import Transform, undo, undo_each
from .keys import Key
from .null import NullModel

SCALE_SAMPLES = 64  # null samples the mean scale sbar^2 is estimated from (a mean over d dof each)
CACHE = 4096  # (key, search) entries kept on one null model
CONFIDENCE = 0.95  # one-sided: the kappa the test divides by is below the true one for ~5 % of null models


def spread(null: NullModel, keys: list[Key], transforms: list[Transform]) -> torch.Tensor:
    """(T, K) float64: kappa of each key (sharing one mask, not ``zeros``) under each transform, at
    the upper end of its ``CONFIDENCE`` interval (module docstring)."""
    from .detection import test_vectors

    names = tuple(t.name for t in transforms)
    cache = null.cache
    todo = [k for k in keys if (k.key_id, names) not in cache]
    if todo:
        if len(cache) + len(todo) > CACHE:
            cache.clear()
        sbar2, se_sbar2 = mean_scale(null, todo[0], transforms, names)  # one per mask: all keys that share it
        z = (null.samples.double() - null.mean()[None]).float().flatten(1)  # (N, CHW)
        z_q = float(stats.norm.ppf(CONFIDENCE))
        with torch.inference_mode(False), torch.enable_grad():
            probe = torch.zeros(len(transforms), *null.latent_shape, requires_grad=True)
            v, k_hat = test_vectors(undo_each(probe, transforms), todo)  # (T, d), (K, d)
            a = v @ k_hat.clone().T  # (T, K): linear in the probe, so its gradient is w
            d = v.shape[-1]
            for j, key in enumerate(todo):
                (w,) = torch.autograd.grad(a[:, j].sum(), probe, retain_graph=j < len(todo) - 1)
                a2 = (z @ w.flatten(1).T).double().pow(2)  # (N, T)
                sigma2 = a2.mean(0)
                se_sigma2 = a2.std(0) / (len(a2) ** 0.5 * sigma2.clamp_min(1e-24))
                kappa2 = sigma2 * (d - 1) / (d * sbar2 - sigma2).clamp_min(1e-12)
                se = (se_sigma2.pow(2) + se_sbar2.pow(2)).sqrt() / 2
                cache[(key.key_id, names)] = (kappa2.sqrt() * (1 + z_q * se)).detach()
    return torch.stack([cache[(k.key_id, names)] for k in keys], dim=1)


def grid_id(names: tuple[str, ...]) -> str:
    """A short name for a list of transforms (their names say all they do)."""
    return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]


def scale_tag(key: Key, names: tuple[str, ...]) -> tuple:
    """Where ``spread`` keeps sbar^2 of the key's mask under the transforms ``names`` (``NullModel.cache``;
    ``io.nullfile`` stores these entries in the file, so a process need not compute them again)."""
    return ("scale", key.radius, tuple(key.channels), grid_id(names))


def with_scales(null: NullModel, keys: list[Key], transforms: list[Transform]) -> NullModel:
    """The null model with sbar^2 of each key's mask under ``transforms`` computed and kept (the
    few seconds a process otherwise pays at its first key: ``io.nullfile.save_null`` writes them)."""
    names = tuple(t.name for t in transforms)
    null = replace(null, cache={k: v for k, v in null.cache.items() if k[0] == "scale"})
    for key in keys:
        mean_scale(null, key, transforms, names)
    return null


def mean_scale(null: NullModel, key: Key, transforms: list[Transform], names: tuple[str, ...]) -> torch.Tensor:
    """(2, T): sbar^2 of the key's mask under ``transforms`` (named ``names``) and its relative
    standard error; kept in the null model's cache, computed (``_scale``) the first time."""
    tag = scale_tag(key, names)
    if tag not in null.cache:
        null.cache[tag] = _scale(null, key, transforms)
    return null.cache[tag]


def _scale(null: NullModel, key: Key, transforms: list[Transform]) -> torch.Tensor:
    """(2, T): sbar^2, the mean square of a degree of freedom of the key's mask under each
    transform, and its relative standard error over the samples it is measured on."""
    from .detection import test_vectors

    z = null.samples[:SCALE_SAMPLES].double() - null.mean()[None]
    per_sample = []
    for i in range(0, len(z), 8):
        v, _ = test_vectors(undo(z[i : i + 8].float(), transforms), [key])  # (b, T, d)
        per_sample.append(v.double().pow(2).mean(-1))
    m = torch.cat(per_sample)  # (n, T)
    return torch.stack([m.mean(0), m.std(0) / (len(m) ** 0.5 * m.mean(0).clamp_min(1e-24))])
