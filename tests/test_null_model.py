"""The null model (``scheme.null``) on coloured Gaussian noise of a known covariance: whitened, every
key's false-positive rate is alpha; unwhitened, some keys are liberal. Then its file, and verify
using it."""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from watermark.bench.null import holm
from watermark.io.nullfile import NullFileError, check_null, load_null, null_name, recovery_fields, resolve_nulls, save_null
from dataclasses import replace

from watermark.pipeline import Recovery
from watermark.scheme.detection import centred, match_keys, score, statistics
from watermark.scheme.geometry import IDENTITY
from watermark.scheme.embedding import centred_spectrum, real_signal, watermarked_latents
from watermark.scheme.keys import new_key
from watermark.scheme.null import NullModel, rings

SHAPE = (4, 32, 32)


def coloured(n: int, seed: int) -> torch.Tensor:
    """z = mu + the inverse FFT of A_rho F_white: a mean field, and on each ring rho a channel mixing
    A_rho whose power falls with rho (channel 2 weakest), as recovered z_T's does."""
    g = torch.Generator().manual_seed(seed)
    white = centred_spectrum(torch.randn(n, *SHAPE, generator=g, dtype=torch.float64))
    ring, top = rings(SHAPE[1:])
    rho = ring.clamp_min(0).double()
    mix = torch.eye(4, dtype=torch.float64) + 0.6 * torch.tensor([[0, 0, 0, 0], [0, 0, 1, -0.5], [0, 1, 0, 0], [0, 0, 0, 0]],
                                                                  dtype=torch.float64)
    power = torch.stack([1.3 - 0.03 * rho, 1.1 - 0.01 * rho, 0.9 - 0.04 * rho, 1.0 + 0.02 * rho])  # (C, H, W)
    spectrum = torch.einsum("cd,bdhw->bchw", mix.to(torch.complex128), white * power.sqrt())
    mean = 0.3 * torch.sin(torch.arange(SHAPE[2], dtype=torch.float64) / 3)[None, None, :].expand(*SHAPE)
    return (real_signal(spectrum) + mean).float()


@pytest.fixture(scope="module")
def null():
    return NullModel(SHAPE).update(coloured(3000, seed=1))


@pytest.fixture(scope="module")
def fresh():
    return coloured(3000, seed=2)


def rates(z: torch.Tensor, null, pattern, channels, n_keys=20, alpha=0.01, test="whitened"):
    keys = [new_key("tiny", SHAPE, pattern=pattern, channels=channels, seed=100 + i) for i in range(n_keys)]
    t, df = statistics(centred(z, null)[:, None], keys, null, test)
    k = (stats.t.sf(t[:, 0].numpy(), df) <= alpha).sum(0)
    return [stats.binomtest(int(x), len(z), alpha, alternative="greater").pvalue for x in k]


SPECS = [("rand", None), ("ring", (0,)), ("ring", (2,)), ("ringid", None)]


def test_whitened_test_is_calibrated_for_every_key(null, fresh):
    p = np.concatenate([rates(fresh, null, pattern, channels) for pattern, channels in SPECS])
    assert not holm(p).any(), sorted(p)[:5]


def test_calibrated_test_is_calibrated_for_every_key(null, fresh):
    """t over its spread on the null's samples (``scheme.calibrated``): each of 80 keys flags a
    fraction of 3,000 coloured-noise draws consistent with alpha (one-sided binomial, Holm over the
    keys; 2 % against 1 % would be seen with power > 0.99 per key)."""
    p = np.concatenate([rates(fresh, null, pattern, channels, test="calibrated") for pattern, channels in SPECS])
    assert not holm(p).any(), sorted(p)[:5]


def test_calibrated_test_is_calibrated_under_the_search(null, fresh):
    """With rotations, crops and mirrors undone (each transform's own spread), the corrected p of
    the best transform is never liberal: Bonferroni over dependent transforms is conservative."""
    from watermark.scheme.geometry import search_grid

    transforms = search_grid("all", SHAPE[-1])[::7]  # every 7th transform, mirrors included: a fast sample
    for pattern, channels in SPECS:
        key = new_key("tiny", SHAPE, pattern=pattern, channels=channels, seed=7)
        p = np.array([m.p_value for m in match_keys(fresh[:1000], [key], transforms, null)])
        flagged = int((p <= 0.05).sum())
        assert stats.binomtest(flagged, len(p), 0.05, alternative="greater").pvalue > 0.01, (pattern, flagged)
        assert flagged > 0 or pattern == "ringid", (pattern, flagged)  # not a test that never fires


def test_the_spread_is_an_upper_confidence_bound(null, monkeypatch):
    """From a small null model (96 samples), the kappa the test divides by is at or above the true
    spread (a 3,000-sample null model's) for about ``CONFIDENCE`` of the null models one could draw;
    the plain estimate is for about half. Loose bounds fail too: the mean factor over the plain
    estimate is the one its standard error implies (~1.12 at 96 samples), not more."""
    from watermark.scheme import calibrated

    confidence = calibrated.CONFIDENCE
    keys = [new_key("tiny", SHAPE, pattern=p, channels=c, seed=11) for p, c in SPECS]
    draws = coloured(40 * 96, seed=4).view(40, 96, *SHAPE)

    def kappas(level, model):
        monkeypatch.setattr(calibrated, "CONFIDENCE", level)
        return torch.cat([calibrated.spread(replace(model, cache={}), [k], [IDENTITY])[0] for k in keys])

    truth = kappas(0.5, null)  # z = 0: the plain estimate, from 3,000 samples
    small = [NullModel(SHAPE).update(d) for d in draws]
    bound = torch.stack([kappas(confidence, m) for m in small])  # (40, 4)
    plain = torch.stack([kappas(0.5, m) for m in small])
    assert (bound >= truth).double().mean() >= 0.85, (bound / truth).min(0)
    assert (plain >= truth).double().mean() <= 0.75
    assert 1.05 < (bound / plain).mean() < 1.2


def test_unwhitened_test_is_liberal_for_some_key(fresh):
    """The noise is coloured enough for the null model to matter (else the test above proves little)."""
    p = np.concatenate([rates(fresh, None, pattern, channels) for pattern, channels in SPECS])
    assert holm(p).any()


def test_whitened_t_follows_student(null, fresh):
    key = new_key("tiny", SHAPE, pattern="ring", channels=(0,), seed=5)
    scores = score(fresh, key, null, "whitened")
    df = scores[0].df
    assert stats.kstest([s.statistic for s in scores], stats.t(df).cdf).pvalue > 0.01


def test_watermark_is_still_detected_after_whitening(null):
    key = new_key("tiny", SHAPE, seed=3)
    z = watermarked_latents(key, seeds=range(8))
    assert all(m.raw_p_value < 1e-12 for m in match_keys(z, [key], null=null))


def test_match_keys_and_score_are_one_statistic(null, fresh):
    key = new_key("tiny", SHAPE, pattern="rand", seed=9)
    a = [s.p_value for s in score(fresh[:16], key, null)]
    b = [m.raw_p_value for m in match_keys(fresh[:16], [key], null=null)]
    assert np.allclose(a, b, rtol=1e-4, atol=1e-12)


def test_null_file_round_trip_and_checks(tmp_path, null):
    """A file is named and checked for the whole look (photometric and the second look included):
    a null made for another recovery is refused, by name and by content."""
    looks = Recovery("encoder", 0, 10, refine="attack_aware:2", photometric=True).looks()
    first = looks["first"]
    made = replace(null, meta={"model": "tiny", "recovery": recovery_fields(first)})
    path = tmp_path / null_name(first, SHAPE)
    assert path.name == "null-encoder-ddim10-photometric-4x32x32.npz"
    assert null_name(looks["second"], SHAPE) == "null-encoder+attack_aware2-ddim10-photometric-4x32x32.npz"
    assert null_name(looks["edited"], SHAPE) == "null-encoder+attack_aware10-edited-ddim10-photometric-4x32x32.npz"
    save_null(made, path)
    back = load_null(path)
    assert back.n == null.n and torch.equal(back.sum_z, null.sum_z) and back.meta["file"] == path.name
    assert torch.equal(back.samples, null.samples)
    # the given file serves the look it was made for; the others are found as with "auto"
    found = resolve_nulls(str(path), "no-such-model", looks, SHAPE)
    assert found["first"].n == null.n and found["second"] is None and found["edited"] is None
    bundled = resolve_nulls(str(path), "tiny", looks, SHAPE)
    assert bundled["first"].n == null.n and bundled["second"].meta["file"] == null_name(looks["second"], SHAPE)
    without = Recovery("encoder", 0, 10, photometric=False).looks()  # the same but no photometric correction
    with pytest.raises(NullFileError, match="recovery"):
        resolve_nulls(str(path), "tiny", without, SHAPE)
    with pytest.raises(NullFileError, match="recovery"):
        check_null(back, looks["second"], SHAPE, path)
    with pytest.raises(NullFileError, match="latent shape"):
        resolve_nulls(str(path), "tiny", looks, (4, 16, 16))
    (tmp_path / "bad.npz").write_bytes(b"not a null model")
    with pytest.raises(NullFileError, match="not a ringmark null-model file"):
        load_null(tmp_path / "bad.npz")
    # found beside the key files, each look by its own name only
    assert resolve_nulls("auto", "no-such-model", looks, SHAPE, [tmp_path / "key.json"])["first"] is not None
    assert resolve_nulls("auto", "no-such-model", without, SHAPE, [tmp_path / "key.json"])["first"] is None
    assert resolve_nulls("auto", "no-such-model", looks, SHAPE, [])["first"] is None


def test_null_file_keeps_the_calibrated_scales(tmp_path, null, fresh):
    """The calibrated test's mean scale of a mask under a search, kept in the file, gives the
    p-values a fresh computation gives; a null model with more images added keeps none."""
    from watermark.scheme.calibrated import scale_tag, with_scales
    from watermark.scheme.geometry import search_grid

    keys = [new_key("tiny", SHAPE, pattern=p, seed=9) for p in ("rand", "ring")]
    grid = search_grid("all", SHAPE[-1])[::40]
    save_null(with_scales(replace(null, cache={}), keys, grid), tmp_path / "n.npz")  # (other tests fill the fixture's)
    back = load_null(tmp_path / "n.npz")
    names = tuple(t.name for t in grid)
    assert sorted(back.cache) == sorted(scale_tag(k, names) for k in keys)  # two masks: radius 7 and 5
    for key in keys:
        kept = [m.p_value for m in match_keys(fresh[:8], [key], grid, back)]
        computed = [m.p_value for m in match_keys(fresh[:8], [key], grid, replace(null, cache={}))]
        assert kept == computed
    assert back.update(fresh[:2]).cache == {}


@pytest.mark.parametrize("path", sorted(str(p) for p in Path(__file__).parents[1].glob(
    "watermark/models/*/null/null-*.npz")), ids=lambda p: p.split("/")[-3] + "/" + p.split("/")[-1][5:-4])
def test_the_shipped_scales_are_the_null_models(path):
    """Each bundled null model's stored scales (``calibration.with_default_scales``) against a fresh
    computation, on every 25th transform of the default search."""
    from watermark.scheme.calibrated import _scale, scale_tag
    from watermark.scheme.geometry import DEFAULT_SEARCH, search_grid

    null = load_null(path)
    grid = search_grid(DEFAULT_SEARCH, null.latent_shape[-1])
    names = tuple(t.name for t in grid)
    for pattern in ("rand", "ring", "ringid"):
        key = new_key("tiny", tuple(null.latent_shape), pattern=pattern, seed=0)
        stored = null.cache[scale_tag(key, names)]
        assert torch.allclose(stored[:, ::25], _scale(null, key, grid[::25]), rtol=1e-9)


def test_calibrate_writes_resumes_and_refuses_to_overwrite(tmp_path):
    from watermark.calibration import calibrate

    out = tmp_path / "null.npz"
    one_look = Recovery("encoder", ddim_steps=10, refine="none", photometric=False)

    def stop_after_first(done, total):
        if done < total:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        calibrate("tiny", out, n=4, steps=2, batch=2, recovery=one_look, progress=stop_after_first)
    assert not out.exists() and load_null(tmp_path / "null.npz.partial").n == 2
    seen = []
    assert calibrate("tiny", out, n=4, steps=2, batch=2, recovery=one_look, progress=lambda d, t: seen.append(d)) == [out]
    assert seen == [4] and load_null(out).n == 4 and not (tmp_path / "null.npz.partial").exists()
    assert load_null(out).meta["recovery"] == recovery_fields(one_look.for_model({}).looks()["first"])
    assert load_null(out).samples.shape == (4, *SHAPE)
    assert {tag[1] for tag in load_null(out).cache} == {5, 7}  # keygen's masks: scales for verify's search kept
    with pytest.raises(NullFileError, match="exists"):
        calibrate("tiny", out, n=4, steps=2, batch=2, recovery=one_look)
    with pytest.raises(NullFileError, match="give a folder"):  # the model's default takes three looks
        calibrate("tiny", tmp_path / "other.npz", n=4, steps=2, batch=2)


def test_cli_calibrate_and_verify_with_and_without_it(tmp_path):
    import json

    from click.testing import CliRunner

    from watermark.cli import main

    runner = CliRunner()
    key = tmp_path / "k.json"
    assert runner.invoke(main, ["keygen", "-o", str(key), "--seed", "1", "-q"]).exit_code == 0
    assert runner.invoke(main, ["embed", "--key", str(key), "-o", str(tmp_path / "im"), "-n", "2", "--steps", "2",
                                "-q"]).exit_code == 0
    r = runner.invoke(main, ["calibrate", "--model", "tiny", "-o", str(tmp_path / "n.npz"), "-n", "3", "--steps", "2",
                             "--inversion", "encoder", "-q"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["calibrate", "--model", "tiny", "-o", str(tmp_path / "n.npz"), "-n", "3",
                             "--inversion", "encoder", "-q"])
    assert r.exit_code == 2 and "exists" in r.output and "Traceback" not in r.output
    rows = lambda out: [json.loads(line) for line in out.splitlines() if line.startswith("{")]  # noqa: E731
    r = runner.invoke(main, ["verify", str(tmp_path / "im"), "--key", str(key), "--json", "-q", "--null",
                             str(tmp_path / "n.npz"), "--inversion", "encoder"])
    assert all(row["null_model"] == "n.npz" and row["note"] is None for row in rows(r.output)), r.output
    r = runner.invoke(main, ["verify", str(tmp_path / "im"), "--key", str(key), "--json", "-q", "--null", "none",
                             "--inversion", "encoder"])
    assert all(row["null_model"] is None and "calibrate" in row["note"] for row in rows(r.output)), r.output
    r = runner.invoke(main, ["verify", str(tmp_path / "im"), "--key", str(key), "-q", "--null", str(key)])
    assert r.exit_code == 2 and "null-model" in r.output and "Traceback" not in r.output
