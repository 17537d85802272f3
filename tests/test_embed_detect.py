"""Embedding is exact and keeps N(0, I); the p-value is calibrated under the null."""

import numpy as np
import pytest
import torch
from scipy import stats

from watermark.scheme.detection import match_keys, score, sidak
from watermark.scheme.embedding import centred_spectrum, inject, watermarked_latents
from watermark.scheme.keys import independent_mask, key_mask, make_pattern, new_key

PATTERNS = ["rand", "ring", "ringid", "zeros"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_pattern_is_hermitian(pattern):
    values = make_pattern(pattern, (32, 32), 5, np.random.default_rng(7))
    flipped = torch.roll(torch.flip(values, dims=(0, 1)), shifts=(1, 1), dims=(0, 1))  # F(-f), centred layout
    assert torch.allclose(values, flipped.conj(), atol=1e-12)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("channels", [(3,), (0, 2), None])
def test_what_is_written_is_what_is_tested(pattern, channels):
    key = new_key("tiny", (4, 32, 32), pattern=pattern, channels=channels, seed=11)
    z = watermarked_latents(key, seeds=[0, 1, 2])
    spectrum = centred_spectrum(z)
    mask = key.mask()
    assert mask.shape == (4, 32, 32) and [c for c in range(4) if mask[c].any()] == list(key.channels)
    assert torch.allclose(spectrum[:, mask], key.pattern_values()[mask].expand(3, -1), atol=1e-5)
    # only the key's channels changed
    clean = watermarked_latents(key, seeds=[0, 1, 2], watermark=False)
    others = [c for c in range(4) if c not in key.channels]
    assert torch.equal(z[:, others], clean[:, others])


def test_watermarked_noise_keeps_standard_normal_statistics():
    key = new_key("tiny", (4, 32, 32), pattern="ring", seed=3)
    # over many keys and seeds, the watermarked channel's values are N(0, 1)
    values = torch.cat([watermarked_latents(new_key("tiny", (4, 32, 32), seed=s), seeds=[s]).flatten() for s in range(20)])
    assert stats.kstest(values.numpy(), "norm").pvalue > 0.01
    assert abs(float(values.std()) - 1) < 0.03
    with pytest.raises(ValueError, match="does not fit the key"):
        inject(torch.zeros(1, 4, 16, 16), key)


def test_mask_is_the_disk_less_the_axes():
    mask = key_mask((32, 32), 5)
    assert not mask[16, :].any() and not mask[:, 16].any()  # the axes fx = 0, fy = 0 (centred layout)
    assert int(mask.sum()) == 60  # 81 bins in the disk of radius 5, 21 of them on the axes
    first, self_conj = independent_mask(mask)
    # each conjugate pair counted once; the only self-conjugate bins (f = -f) lie on the axes
    assert 2 * int(first.sum()) == int(mask.sum()) and int(self_conj.sum()) == 0


@pytest.mark.parametrize("pattern", ["ring", "rand", "ringid"])
def test_every_key_has_the_energy_of_the_noise_it_replaces(pattern):
    for seed in range(30):
        key = new_key("tiny", (4, 32, 32), pattern=pattern, seed=seed)
        values = key.pattern_values()[key.mask()]
        assert float(values.abs().pow(2).mean()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_calibrated_under_the_null(pattern, alpha):
    """Noise that does not carry the key: P(p <= alpha) is consistent with alpha."""
    key = new_key("tiny", (4, 32, 32), pattern=pattern, seed=20241127)
    rng_seeds = list(range(10_000, 12_000))
    p = np.array([s.p_value for s in score(watermarked_latents(key, seeds=rng_seeds, watermark=False), key)])
    k = int((p <= alpha).sum())
    assert stats.binomtest(k, len(p), alpha).pvalue > 0.01, (k, len(p))


@pytest.mark.parametrize("pattern", ["ring", "rand", "ringid"])
def test_watermarked_noise_is_detected_and_identified(pattern):
    for seed in range(20):
        keys = [new_key("tiny", (4, 32, 32), pattern=pattern, seed=100 * seed + j) for j in range(3)]
        z = watermarked_latents(keys[1], seeds=[seed])
        assert score(z, keys[1])[0].p_value < 1e-12
        best = match_keys(z, keys)[0]
        assert best.key_id == keys[1].key_id and best.keys_tested == 3


def test_sidak():
    assert sidak(0.01, 1) == pytest.approx(0.01)
    assert sidak(0.01, 3) == pytest.approx(1 - 0.99**3)
    assert sidak(1.0, 5) == 1.0
    assert sidak(1e-300, 3) == pytest.approx(3e-300)
