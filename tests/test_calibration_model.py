"""Calibration on clean images made by the bundled model: P(p <= alpha) <= alpha.

One-sided: z_T recovered from an image is not exactly white noise, and the test may be
conservative on it; what must not happen is an excess of false positives.
"""

import numpy as np
import pytest
from scipy import stats

from watermark import api
from watermark.pipeline import Recovery


def false_positive_counts(tmp_path, n, steps):
    key = api.keygen(tmp_path / "k.json", seed=20241127)
    api.embed(key, tmp_path / "clean", n=n, seed=50_000, steps=steps, watermark=False)
    results = api.verify([str(tmp_path / "clean")], [key], Recovery(ddim_steps=steps))
    p = np.array([r.p_value for r in results])
    assert len(p) == n and np.isfinite(p).all()
    return {alpha: int((p <= alpha).sum()) for alpha in (0.05, 0.01)}


@pytest.mark.slow  # ~1.5 min on 2 cores
def test_clean_model_images_are_calibrated(tmp_path):
    counts = false_positive_counts(tmp_path, n=96, steps=10)
    for alpha, k in counts.items():
        assert stats.binomtest(k, 96, alpha, alternative="greater").pvalue > 0.01, (alpha, k)


@pytest.mark.slow
def test_clean_model_images_are_calibrated_at_full_steps(tmp_path):
    counts = false_positive_counts(tmp_path, n=400, steps=50)
    for alpha, k in counts.items():
        assert stats.binomtest(k, 400, alpha, alternative="greater").pvalue > 0.01, (alpha, k)
