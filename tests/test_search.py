"""The geometric search (scheme.geometry): it finds a known rotation or crop of a watermarked
latent, and the p-value corrected for the search stays calibrated under the null."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from watermark.scheme.detection import match_keys
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.geometry import IDENTITY, SEARCHES, compose, crop, rotation, search_grid, undo, undo_each
from watermark.scheme.keys import new_key


def _pil(z: torch.Tensor, edit) -> torch.Tensor:
    """Apply a PIL edit to each channel of one latent (1, C, H, W), in float."""
    return torch.stack([torch.from_numpy(np.array(edit(Image.fromarray(c.numpy().astype(np.float32), mode="F"))))
                        for c in z[0]])[None]


@pytest.mark.parametrize("edit, found", [
    (lambda im: im.rotate(75, resample=Image.Resampling.BILINEAR), "rotation 75"),
    (lambda im: im.rotate(-30, resample=Image.Resampling.BILINEAR), "rotation 330"),
    # the width cropped to 24 of 32 px from x = 6 (centre +2 px = +0.125 of the half-width), resized back
    (lambda im: im.crop((6, 0, 30, 32)).resize((32, 32), Image.Resampling.BILINEAR), "crop x 0.75 +0.125"),
    (lambda im: im.crop((0, 2, 32, 26)).resize((32, 32), Image.Resampling.BILINEAR), "crop y 0.75 -0.125"),
    (lambda im: im.crop((4, 4, 28, 28)).resize((32, 32), Image.Resampling.BILINEAR), "crop xy 0.75 +0 +0"),
])
def test_the_search_finds_a_known_rotation_or_crop(edit, found):
    key = new_key("tiny", (4, 32, 32), seed=5)
    z = _pil(watermarked_latents(key, seeds=[1]), edit)
    plain = match_keys(z, [key])[0]
    best = match_keys(z, [key], search_grid("all"))[0]
    assert best.transform == found and best.transforms_tested == len(search_grid("all"))
    assert best.p_value < 1e-20 < plain.p_value  # what the search recovers, the plain test does not


def test_grid_and_undo():
    assert [len(search_grid(s)) for s in SEARCHES] == [1, 72, 136, 2, 414]  # "all": 207, each also mirrored
    assert search_grid("all")[207].name == "mirror" and search_grid("all")[-1].name.startswith("mirror + crop")
    z = torch.randn(2, 4, 32, 32)
    assert torch.equal(undo(z, search_grid("mirror"))[:, 1], z.flip(-1))  # the flip is exact
    w = undo_each(torch.cat([z[:1]] * 3), search_grid("all")[:3])
    assert torch.allclose(w, undo(z[:1], search_grid("all")[:3])[0], atol=1e-5)
    # scaled with the latent side: a 64-px latent (SD at 512 px) turns every 2.5 degrees, shifts by 1/32
    assert len(search_grid("rotation", 64)) == 144 and search_grid("crop", 64)[1].name == "crop x 0.9 -0.0938"
    assert all(search_grid(s)[0] == IDENTITY for s in SEARCHES)
    z = torch.randn(2, 4, 32, 32)
    out = undo(z, search_grid("rotation")[:3])
    assert out.shape == (2, 3, 4, 32, 32) and torch.equal(out[:, 0], z)
    with pytest.raises(ValueError, match="search must be one of"):
        search_grid("zoom")


def test_compose_undoes_a_turn_then_a_crop_as_the_two_undone_in_turn():
    """A latent turned 10 degrees and then cropped to 75 % about (+2, -2) px: ``compose`` undoes
    both in one resampling, as undoing the crop and then the turn does in two (on a smooth latent,
    where bilinear resampling twice and once agree), and undoes the edit itself."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    z = torch.stack([torch.sin(2 * x + k) * torch.cos(3 * y - k) for k in range(4)])[None]  # (1, 4, 32, 32)
    turn, cut = rotation(10), crop(0.75, 0.125, -0.125)
    both = compose(turn, cut)
    assert both.name == "rotation 10 + crop xy 0.75 +0.125 -0.125"
    in_turn = undo_each(undo_each(z, [cut]), [turn])
    inside = (slice(None), slice(None), slice(8, 24), slice(8, 24))  # away from the zero padding
    assert torch.allclose(undo_each(z, [both])[inside], in_turn[inside], atol=0.02)
    edited = _pil(_pil(z, lambda im: im.rotate(10, resample=Image.Resampling.BILINEAR)),
                  lambda im: im.crop((6, 2, 30, 26)).resize((32, 32), Image.Resampling.BILINEAR))
    assert torch.allclose(undo_each(edited, [both])[inside], z[inside], atol=0.1)
    assert np.allclose(compose(IDENTITY, turn).matrix, turn.matrix)


# the default pattern in the default suite; the other two (25 s each) behind the slow marker
@pytest.mark.parametrize("pattern", ["rand", pytest.param("ring", marks=pytest.mark.slow),
                                     pytest.param("ringid", marks=pytest.mark.slow)])
def test_the_search_keeps_the_p_value_calibrated(pattern):
    """N(0, I) noise without the key, with all 207 transforms: Bonferroni over the transforms may
    be conservative, never liberal, so P(p <= alpha) must not exceed alpha (one-sided binomial),
    at alpha 0.05 and 0.01 (the same 400 p-values for both)."""
    key = new_key("tiny", (4, 32, 32), pattern=pattern, seed=20241128)
    z = watermarked_latents(key, seeds=range(30_000, 30_400), watermark=False)
    grid = search_grid("all")
    p = np.array([m.p_value for i in range(0, len(z), 50) for m in match_keys(z[i : i + 50], [key], grid)])
    for alpha in (0.05, 0.01):
        k = int((p <= alpha).sum())
        assert stats.binomtest(k, len(p), alpha, alternative="greater").pvalue > 0.01, (alpha, k, len(p))


def test_zeros_keys_are_corrected_only_for_the_test_they_get():
    """A zeros key is tested once, without the search: its p-value is not multiplied by the 207
    transforms the other keys are tried under (issue 22), and the row says 1 transform."""
    from watermark.scheme.detection import corrected

    gen = torch.Generator().manual_seed(5)
    zeros = new_key("tiny", (4, 32, 32), pattern="zeros", seed=1)
    z = watermarked_latents(zeros, 3, generator=gen)
    grid = search_grid("all")
    for m in match_keys(z, [zeros], grid):
        assert m.transforms_tested == 1 and m.transform == "identity" and m.p_value == m.raw_p_value
    rand = new_key("tiny", (4, 32, 32), pattern="rand", seed=2)
    for m in match_keys(z, [zeros, rand], grid):  # two keys: Sidak over both, Bonferroni over the winner's tests
        tested = 1 if m.key_id == zeros.key_id else len(grid)
        assert m.transforms_tested == tested and m.p_value == pytest.approx(corrected(m.raw_p_value, 2, tested))
