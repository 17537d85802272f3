"""Calibration on clean images made by the bundled model, and on photographs: P(p <= alpha) <= alpha,
for every pattern, with and without the geometric search, with each model's null model as verify
runs it; and per key, for 50 keys of each pattern over 2,048 clean images (``bench.null``).

One-sided: z_T recovered from an image is not exactly white noise, and the test may be
conservative on it (the search's Bonferroni correction is, by design); what must not happen is
an excess of false positives.
"""

import numpy as np
import pytest
import torch
from scipy import stats

from watermark import api
from watermark.bench import null as null_bench
from watermark.io.nullfile import find_null, load_null
from watermark.models import get_model
from watermark.pipeline import Recovery, recover_noise
from watermark.scheme.detection import match_keys
from watermark.scheme.geometry import search_grid
from watermark.scheme.keys import new_key

PATTERNS = ("rand", "ring", "ringid")
MODELS = ("tiny", "tiny-sd", "tiny-flow")  # the bundled models, each at its declared recovery (Recovery())


def false_positive_counts(tmp_path, n, steps, model_name="tiny"):
    key = api.keygen(tmp_path / "k.json", model=model_name, seed=20241127)
    api.embed(key, tmp_path / "clean", n=n, seed=50_000, steps=steps, watermark=False)
    results = api.verify([str(tmp_path / "clean")], [key], Recovery(ddim_steps=steps))
    p = np.array([r.p_value for r in results])
    assert len(p) == n and np.isfinite(p).all()
    return {alpha: int((p <= alpha).sum()) for alpha in (0.05, 0.01)}


def model_null(model_name: str, shape):
    model = get_model(model_name)
    path = find_null(model_name, Recovery().for_model(model.default_recovery).looks()["first"], tuple(shape))
    assert path is not None, f"{model_name} ships no null model for its recovery"
    return load_null(path)


def excess_false_positives(z_T: torch.Tensor, seed: int, model_name: str) -> list[tuple]:
    """Each pattern (a fixed key), with and without the search: the (pattern, search, alpha, false
    positives) whose one-sided binomial test at 0.05 and 0.01 says there are too many."""
    n, found = len(z_T), []
    null = model_null(model_name, z_T.shape[1:])
    for pattern in PATTERNS:
        key = new_key(model_name, tuple(z_T.shape[1:]), pattern=pattern, seed=seed)
        for search in ("none", "all"):
            p = np.array([m.p_value for i in range(0, n, 16)
                          for m in match_keys(z_T[i : i + 16], [key], search_grid(search), null)])
            for alpha in (0.05, 0.01):
                k = int((p <= alpha).sum())
                if stats.binomtest(k, n, alpha, alternative="greater").pvalue <= 0.01:
                    found.append((pattern, search, alpha, k))
    return found


def assert_calibrated(z_T: torch.Tensor, seed: int, model_name: str):
    assert excess_false_positives(z_T, seed, model_name) == []


@pytest.mark.slow  # ~2 min on 2 cores
@pytest.mark.parametrize("model_name", MODELS)
def test_clean_model_images_are_calibrated_for_every_pattern(model_name):
    model = get_model(model_name)
    z = torch.randn(96, *model.latent_shape(128), generator=torch.Generator().manual_seed(50_000))
    images = torch.cat([model.generate(z[i : i + 16], 10) for i in range(0, 96, 16)]) * 2 - 1
    z_T = torch.cat([recover_noise(model, images[i : i + 8], Recovery(ddim_steps=10))[0] for i in range(0, 96, 8)])
    assert_calibrated(z_T, seed=20241127, model_name=model_name)


@pytest.mark.slow  # ~2 min on 2 cores
@pytest.mark.parametrize("model_name", MODELS)
def test_photographs_are_calibrated_for_every_pattern(model_name):
    """96 random 128 px crops of scikit-image's held-out photo and seven training photos."""
    pytest.importorskip("skimage")
    from watermark.training.train import HELD_OUT, TRAIN_PHOTOS, load_photo, random_crops

    model = get_model(model_name)
    photos = [load_photo(name) for name in (HELD_OUT, *TRAIN_PHOTOS[:7])]
    images = random_crops(photos, 96, 128, torch.Generator().manual_seed(7))
    z_T = torch.cat([recover_noise(model, images[i : i + 8], Recovery(ddim_steps=10))[0] for i in range(0, 96, 8)])
    assert_calibrated(z_T, seed=20241128, model_name=model_name)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", MODELS)
def test_clean_model_images_are_calibrated_at_full_steps(tmp_path, model_name):
    counts = false_positive_counts(tmp_path, n=400, steps=50, model_name=model_name)
    for alpha, k in counts.items():
        assert stats.binomtest(k, 400, alpha, alternative="greater").pvalue > 0.01, (alpha, k)


@pytest.mark.slow  # 40 min (tiny-flow) to 2 h (tiny, three looks) per model on one thread: 2,048 generations
@pytest.mark.parametrize("model_name", MODELS)
def test_every_key_is_calibrated(model_name):
    """50 keys each of rand, ring on each channel and ringid (300 keys) on 2,048 clean 8-bit images,
    each key tested alone by verify's rule (``pipeline.detect``: its looks and null models), no
    search: no key's false-positive rate at alpha 0.01 is above alpha (one-sided binomial per key,
    Holm across keys at 0.01). Without the null model, the same test finds liberal keys on tiny-sd
    (``ringmark bench null``, docs/bench/null). The images are made with 50 sampling steps, as
    ``embed`` makes them and the null models were: with 10, tiny-flow's images spread more on one
    channel and one key of 300 came out liberal (docs/bench/null/per-key-slow-test-1024.txt)."""
    from watermark.io.images import to_pil, to_tensor
    from watermark.io.nullfile import resolve_nulls
    from watermark.recovery import take_looks

    model = get_model(model_name)
    recovery = Recovery().for_model(model.default_recovery)
    nulls = resolve_nulls("auto", model_name, recovery.looks(), model.latent_shape(model.default_size))
    assert nulls["first"] is not None, f"{model_name} ships no null model for its recovery"
    x = to_tensor(to_pil((null_bench.clean_images(model, 2048, steps=50) + 1) / 2))  # 8 bits, as verify reads
    rates = null_bench.per_key_rates(model, x, recovery, take_looks(model, x, recovery), nulls, n_keys=50,
                                     search="none")
    summary = null_bench.summarise(rates)
    print(model_name, summary)  # the rates, for the record (pytest -s)
    assert summary["keys"] == 300 and summary["holm_rejected"] == 0, summary
