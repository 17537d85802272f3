"""verify --log: a watermarked image is `confirmed` when a generation logged under its key matches
its content, `unconfirmed` when none does, `unchecked` without a log; the content match's p-value
is calibrated under the null of unrelated generations."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from scipy import stats

from watermark.cli import main


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """Three keys, an image of each embedded with the log (one generation logged per key: keys
    drawn from a keyring are random, and the check's p-value grows with the generations compared),
    and one more image of the third key, not logged."""
    tmp = tmp_path_factory.mktemp("provenance")
    runner = CliRunner()
    (tmp / "keys").mkdir()
    for i in range(3):
        assert runner.invoke(main, ["keygen", "-o", str(tmp / "keys" / f"k{i}.json"), "--seed", str(i), "-q"]).exit_code == 0
    for i, (out, seed, log) in enumerate((("out0", 0, True), ("out1", 1, True), ("out2", 2, True), ("other", 100, False))):
        key = tmp / "keys" / f"k{min(i, 2)}.json"
        result = runner.invoke(main, ["embed", "--key", str(key), "-o", str(tmp / out), "-n", "1", "--steps", "10",
                                      "--seed", str(seed), "-q"] + (["--log", str(tmp / "gen.sqlite")] if log else []))
        assert result.exit_code == 0, result.output
    image = Image.open(tmp / "out1" / "00000.png")
    image.rotate(10, resample=Image.Resampling.BICUBIC).save(tmp / "rotated.png")
    side, kept = image.size[0], round(image.size[0] * 0.85)
    turned = image.rotate(10, resample=Image.Resampling.BICUBIC).crop(((side - kept) // 2,) * 2 + ((side + kept) // 2,) * 2)
    turned.resize(image.size, Image.Resampling.BICUBIC).save(tmp / "turned_and_cropped.jpg", quality=60)
    occluded = np.asarray(image).copy()
    occluded[20 : 20 + side // 2, 37 : 37 + side // 2] = 0  # a black square over a quarter of the image
    Image.fromarray(occluded).save(tmp / "occluded.png")
    return tmp


def rows(tmp, *args) -> dict:
    result = CliRunner().invoke(main, ["verify", *args, "--key", str(tmp / "keys"), "--json", "-q"])
    assert result.exit_code in (0, 1), result.output
    return {json.loads(line)["path"].split(str(tmp))[-1]: json.loads(line) for line in result.output.splitlines()}


def test_verify_with_the_log_confirms_logged_generations_only(logged):
    found = rows(logged, str(logged / "out0" / "00000.png"), str(logged / "rotated.png"),
                 str(logged / "other" / "00000.png"), "--log", str(logged / "gen.sqlite"))
    manifest = {out: json.loads((logged / out / "manifest.jsonl").read_text()) for out in ("out0", "out1")}
    genuine, edited, unlogged = found["/out0/00000.png"], found["/rotated.png"], found["/other/00000.png"]
    assert all(r["watermarked"] for r in found.values())
    assert genuine["provenance"] == "confirmed" and genuine["provenance_image_id"] == manifest["out0"]["image_id"]
    assert genuine["provenance_similarity"] > 0.99 and genuine["provenance_p_value"] <= 0.01
    assert edited["provenance"] == "confirmed" and edited["provenance_image_id"] == manifest["out1"]["image_id"]
    assert unlogged["provenance_compared"] == 1  # its key fires; the one generation logged under it is another
    without = rows(logged, str(logged / "out0" / "00000.png"))
    assert without["/out0/00000.png"]["provenance"] == "unchecked"


def test_a_turned_and_cropped_or_occluded_generation_is_confirmed(logged):
    """A 10-degree turn, then an 85 % crop (JPEG 60): neither the turn nor the crop of the key
    search undoes both, so the seed test also tries them composed (``noise.candidates``), and the
    content test the transform that aligned the seed. A black square over a quarter of the image:
    its cells are left out of the content test (``fingerprint.solid``), not compared as content."""
    image_id = json.loads((logged / "out1" / "manifest.jsonl").read_text())["image_id"]
    found = rows(logged, str(logged / "turned_and_cropped.jpg"), str(logged / "occluded.png"),
                 "--log", str(logged / "gen.sqlite"))
    for name in ("/turned_and_cropped.jpg", "/occluded.png"):
        r = found[name]
        assert r["watermarked"] and r["provenance"] == "confirmed", (name, r)
        assert r["provenance_image_id"] == image_id and r["provenance_p_value"] <= 0.01


def test_solid_clipping_is_a_patch_and_scattered_clipping_is_not():
    """``fingerprint.solid`` marks a pasted black square and its rim, and none of the pixels that
    noise pushed to the ends of the range one by one."""
    from watermark.provenance import fingerprint

    clipped = (torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0)) < 0.3).float()  # scattered
    assert fingerprint.solid(clipped).sum() == 0
    clipped[:, 10:30, 21:41] = 1  # a 20 x 20 patch
    clipped[:, 9, 21:41] = 0.5  # its rim, cut by the pooling: partly clipped
    marked = fingerprint.solid(clipped)
    assert marked[:, 9:30, 21:41].eq(1).all() and marked.sum() < 21 * 20 + 4 * 24


def test_a_contrast_change_that_blows_out_most_of_an_image_still_matches_its_thumbnail():
    """A bright textured sky over a dark strip, contrast x 1.5: the sky clips to a solid white
    patch that covers most of the cells. Leaving those cells out (an occlusion's rule) leaves too
    few to compare; the mask that keeps them matches the logged thumbnail."""
    from watermark.provenance import fingerprint
    from watermark.scheme.geometry import IDENTITY

    g = torch.Generator().manual_seed(0)
    x = torch.full((3, 128, 128), 0.85) + 0.05 * torch.randn(1, 128, 128, generator=g)  # the sky
    x[:, 100:, :] = -0.6 + 0.2 * torch.rand(1, 28, 128, generator=g)  # the ground
    x = x.clamp(-1, 1)
    edited = (1.5 * x).clamp(-1, 1)
    assert fingerprint.solid(((edited.abs() >= fingerprint.CLIP_LEVEL).float()[:1])).mean() > 0.75
    others = fingerprint.pixels(torch.rand(8, 3, 128, 128, generator=g) * 2 - 1).numpy()
    sims = fingerprint.pixel_similarity(edited, np.concatenate([fingerprint.pixels(x[None]).numpy(), others]),
                                        [IDENTITY])
    assert sims[0] >= fingerprint.MIN_SIMILARITY and sims[0] > sims[1:].max()


def test_another_generation_under_the_same_key_is_not_confirmed(logged):
    """Its content shares the key's imprint with the logged one; its seed's noise does not."""
    unlogged = rows(logged, str(logged / "other" / "00000.png"), "--log", str(logged / "gen.sqlite"))
    assert unlogged["/other/00000.png"]["provenance"] == "unconfirmed"
    assert unlogged["/other/00000.png"]["provenance_unmatched"] == "seed noise"


def test_a_missing_log_is_a_one_line_error(logged):
    result = CliRunner().invoke(main, ["verify", str(logged / "out0"), "--key", str(logged / "keys"), "--log",
                                       str(logged / "nothere.sqlite")])
    assert result.exit_code == 2 and "no such generation log" in result.output and "Traceback" not in result.output


def test_content_match_p_value_is_calibrated_under_unrelated_generations(tmp_path):
    """Suspects that are generations of the model under other keys, tested as if the logged
    generation's key had fired on them and as if their z_T were the logged one's (a forger who
    imprints the whole z_T, so that the content test decides): the content test's p-value
    (rank against tiny's shipped reference pool) is flagged at alpha = 0.1 within the binomial
    bound, for each set of transforms verify compares over. Fails by luck with probability < 2e-3."""
    from watermark import get_model, make_key, watermarked_latents
    from watermark.api import Generated, logged as rows_of
    from watermark.io.genlog import GenerationLog
    from watermark.provenance.check import check, references
    from watermark.provenance.fingerprint import PIXEL_KIND, family
    from watermark.scheme.geometry import search_grid

    model = get_model("tiny")
    n, alpha = 60, 0.1
    key = make_key(model, seed=4)  # the logged generation's; each suspect carries a key of its own (a forger's cover
    # is not generated with the key it forges: same-key generations are the known defect above)
    z = torch.cat([watermarked_latents(key if i == 0 else make_key(model, seed=1000 + i), seeds=[7_000_000 + i])
                   for i in range(n + 1)])
    x = (model.generate(z, steps=10) * 255).round() / 255 * 2 - 1
    log = GenerationLog.open(tmp_path / "gen.sqlite")
    made = [Generated(file="0.png", image_id="logged", sha256="", seed=0, prompt="", key_id=key.key_id, model="tiny",
                      watermarked=True, steps=10, guidance=None)]
    log.add(rows_of(made, x[:1]))  # one generation logged under the key; the suspects are the others
    z_T = watermarked_latents(key, seeds=[0])[0]  # the logged seed's noise, as a whole-z_T imprint copies it
    reference = references("tiny", key.latent_shape)
    assert len(reference[PIXEL_KIND]) == 1024
    grid = search_grid("all", 32)
    for found in (grid[0], grid[150]):  # as verify compares: the identity; a crop with its other offsets
        transforms = family(found, grid)
        p = np.array([check(im, None, z_T, key, log, transforms, alpha, reference).p_content for im in x[1:]])
        assert np.sum(p <= alpha) <= int(stats.binom.isf(1e-3, n, alpha)), (found.name, np.sort(p)[:10])


def test_no_perturbation_within_the_psnr_budget_moves_the_thumbnail_further():
    """``thumbnail_forgery`` is the content test's worst case: Adam on the pixels, from many starts,
    minimising the same residual under the same PSNR budget, does not beat it (up to 1e-3). And
    the similarity it reaches is what the bound says: the residual shrinks by at most the budget's
    RMS (x 1.16 on the luminance) over the logged thumbnail's."""
    from watermark.bench.forgery import thumbnail_forgery, thumbnail_residual
    from watermark.provenance import fingerprint
    from watermark.scheme.geometry import IDENTITY

    g = torch.Generator().manual_seed(0)
    smooth = lambda n: torch.nn.functional.avg_pool2d(torch.rand(n, 3, 64, 64, generator=g) * 2 - 1, 9, 1, 4) * 3
    covers, source = smooth(4).clamp(-0.9, 0.9), smooth(1).clamp(-1, 1)
    floor = 30.0
    best = thumbnail_forgery(covers, source, floor)
    budget = 4 * 10 ** (-floor / 10)
    assert (best - covers).pow(2).flatten(1).mean(1).max() <= budget * 1.001
    closed = thumbnail_residual(best, source)
    for start in range(3):
        delta = (torch.randn(covers.shape, generator=g) * 0.01).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=0.003)
        for _ in range(300):
            loss = thumbnail_residual((covers + delta).clamp(-1, 1), source).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                mse = delta.pow(2).flatten(1).mean(1)
                delta *= (budget / mse.clamp_min(1e-12)).sqrt().clamp(max=1.0)[:, None, None, None]
        adam = thumbnail_residual((covers + delta.detach()).clamp(-1, 1), source)
        assert torch.all(adam >= closed - 1e-3), (adam, closed)
    start = thumbnail_residual(covers, source)
    s = fingerprint.luma(fingerprint.pixels(source).view(3, -1))
    bound = 2 * 10 ** (-floor / 20) * 1.16 * s.shape[1] ** 0.5 / (s - s.mean()).norm()  # RMS 1.16 e over P cells
    assert torch.all(start - closed <= bound + 1e-4) and torch.all(start - closed > 0)
    sims = [fingerprint.pixel_similarity(x, fingerprint.pixels(source).numpy(), [IDENTITY])[0] for x in best]
    assert np.allclose(sims, 1 - closed.numpy(), atol=1e-4)


def test_the_report_shows_the_logged_generation_beside_the_suspect(logged, tmp_path):
    """verify --log --report: the matched generation's row and its image (read back from where
    embed wrote it, checked against the logged SHA-256); an image changed since is not shown."""
    import shutil

    manifest = json.loads((logged / "out1" / "manifest.jsonl").read_text())
    report = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["verify", str(logged / "rotated.png"), "--key", str(logged / "keys"), "--log",
                                       str(logged / "gen.sqlite"), "--report", str(report), "-q"])
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert f"confirmed: the logged generation whose seed's noise matches best <code>{manifest['image_id']}</code>" in html
    assert 'alt="the logged generation"' in html and "has changed since" not in html
    # the logged PNG replaced by another image: its row stays, its picture does not
    original = logged / "out1" / "00000.png"
    shutil.copy(original, tmp_path / "keep.png")
    try:
        shutil.copy(logged / "out0" / "00000.png", original)
        result = CliRunner().invoke(main, ["verify", str(logged / "rotated.png"), "--key", str(logged / "keys"), "--log",
                                           str(logged / "gen.sqlite"), "--report", str(report), "--force", "-q"])
        assert result.exit_code == 0, result.output
        html = report.read_text()
        assert manifest["image_id"] in html and "has changed since it was logged" in html
        assert 'alt="the logged generation"' not in html
    finally:
        shutil.copy(tmp_path / "keep.png", original)


def test_seed_noise_p_value_is_exact_under_unrelated_images():
    """The seed test's null: a suspect's recovered z_T (any image not made from the seed) against
    seeds' noise drawn independently of it. Its p-value for one comparison is uniform (the Beta law
    of a random direction's cosine, whatever the suspect): Kolmogorov-Smirnov on 2,000 p-values of
    recovered z_T of model images and of structured, non-Gaussian suspects. Fails by luck with
    probability 2e-3."""
    from watermark import get_model, make_key
    from watermark.provenance import noise
    from watermark.scheme.geometry import IDENTITY

    model = get_model("tiny")
    key = make_key(model, seed=4)
    rng = torch.Generator().manual_seed(0)
    suspects = torch.cat([torch.randn(5, *key.latent_shape, generator=rng).sign() * 3,  # far from Gaussian
                          torch.randn(5, *key.latent_shape, generator=rng).cumsum(-1)])  # smooth, correlated
    logged = noise.seeds_residual(key, list(range(9_000_000, 9_000_200)))
    cos = torch.stack([noise.cosines(s, key, logged, [IDENTITY]) for s in suspects]).flatten()
    p = [noise.p_value(float(c), noise.rank(key), 1) for c in cos]
    assert stats.kstest(p, "uniform").pvalue > 2e-3


@pytest.mark.parametrize("pattern", ["rand", "ring", "ringid"])
def test_aligned_cosines_are_those_of_the_projected_residuals(pattern):
    """``noise.aligned`` skips the projection of every undone latent (<P z, g> = <z, g>; ||P z||
    from the key's masked energy): its cosines are those of P z itself, computed with the FFT."""
    from watermark.provenance import noise
    from watermark.scheme.geometry import search_grid, undo_each
    from watermark.scheme.keys import new_key

    key = new_key("tiny", (4, 32, 32), pattern=pattern, seed=5)
    logged = noise.seeds_residual(key, list(range(6)))
    transforms = noise.candidates(search_grid("all"))[::50]
    z_T = torch.randn(4, 32, 32, generator=torch.Generator().manual_seed(1))
    u = noise.residual(undo_each(z_T[None].expand(len(transforms), -1, -1, -1), transforms), key)
    direct = ((u / u.norm(dim=1, keepdim=True)) @ logged.T).max(0)
    fast = noise.aligned(z_T, key, logged, transforms)
    assert torch.allclose(fast[0], direct.values, atol=1e-6) and torch.equal(fast[1], direct.indices)


def test_the_checker_rebuilds_a_keys_seed_noise_once_while_its_seeds_stay_the_same():
    """A batch of suspects under one key compares against the same logged seeds: rebuilt once,
    equal to ``noise.seeds_residual``; a seed logged since (another list) is rebuilt."""
    from watermark import get_model, make_key
    from watermark.provenance import noise
    from watermark.provenance.check import Checker

    key = make_key(get_model("tiny"), seed=3)
    checker = Checker(log=None, keys=[key], transforms=[], alpha=0.01)
    first = checker.seeds_residual(key, [5, 6, 7])
    assert torch.equal(first, noise.seeds_residual(key, [5, 6, 7]))
    assert checker.seeds_residual(key, [5, 6, 7]) is first
    grown = checker.seeds_residual(key, [5, 6, 7, 8])
    assert grown.shape[0] == 4 and torch.equal(grown[:3], first)


def test_the_checkers_seed_noise_cache_is_bounded_over_all_keys(monkeypatch):
    """A long-lived server checks many keys: the cache keeps at most CACHED_SEEDS seeds in all,
    dropping the least recently used key's first."""
    from watermark import get_model, make_key
    from watermark.provenance import check

    monkeypatch.setattr(check, "CACHED_SEEDS", 5)
    model = get_model("tiny")
    a, b = make_key(model, seed=3), make_key(model, seed=4)
    checker = check.Checker(log=None, keys=[a, b], transforms=[], alpha=0.01)
    checker.seeds_residual(a, [1, 2, 3])
    checker.seeds_residual(b, [4, 5, 6])
    assert list(checker.noise) == [b.key_id]
    assert checker.seeds_residual(a, list(range(10))).shape[0] == 10 and list(checker.noise) == [b.key_id]


def test_a_log_written_with_latent_fingerprints_is_still_checked(tmp_path):
    """Rows logged before thumbnails were (the first look's pooled z_0, ``LATENT_KIND``) are checked
    with the latent test: the image is confirmed, another generation of its key is not."""
    from watermark import get_model, make_key, watermarked_latents
    from watermark.api import Generated, logged as rows_of
    from watermark.io.genlog import GenerationLog
    from watermark.io.images import save_png
    from watermark.io.keyfile import save_key
    from watermark.pipeline import Recovery
    from watermark.provenance import fingerprint
    from watermark.recovery import look_latents

    model = get_model("tiny")
    key = make_key(model, seed=11)
    (tmp_path / "keys").mkdir()
    save_key(key, tmp_path / "keys" / "key.json")
    x = (model.generate(watermarked_latents(key, seeds=[5, 6]), steps=10) * 255).round() / 255 * 2 - 1
    for i, im in enumerate(x):
        save_png((im + 1) / 2, tmp_path / f"{i}.png")
    made = [Generated(file="0.png", image_id="old", sha256="", seed=5, prompt="", key_id=key.key_id, model="tiny",
                      watermarked=True, steps=10, guidance=None)]
    z_0, _ = look_latents(model, x[:1], Recovery().for_model(model.default_recovery).looks()["first"])
    row = dataclasses.replace(rows_of(made, x[:1])[0], fingerprint=fingerprint.latent(z_0)[0].astype("float16"),
                              fingerprint_kind=fingerprint.LATENT_KIND)  # as embed --log wrote it then
    GenerationLog.open(tmp_path / "gen.sqlite").add([row])
    found = rows(tmp_path, str(tmp_path / "0.png"), str(tmp_path / "1.png"), "--log", str(tmp_path / "gen.sqlite"))
    assert found["/0.png"]["watermarked"] and found["/0.png"]["provenance"] == "confirmed", found["/0.png"]
    assert found["/1.png"]["provenance"] == "unconfirmed"
