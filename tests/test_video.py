"""Video: Wan 2.1 through the model protocol on a tiny random checkpoint built here (no download),
the key in every latent frame, the pooled clip test, and decoder inversion on clips."""

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

import families
from inversion import ddim_invert, invert_decoder
from watermark.bench import video_inversion
from watermark.cli import main
from watermark.models import ModelError, load_model
from watermark.scheme.clip import match_clip
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key

SIZE, FRAMES, STEPS = 64, 9, 8  # 9 frames: 3 latent frames of 8 x 8


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    folder = families.wan(tmp_path_factory.mktemp("wan"))
    return folder, load_model(str(folder))


def nmse_db(a, b):
    return float(10 * torch.log10((a - b).pow(2).sum() / b.pow(2).sum()))


def test_wan_loads_from_model_index_with_its_clip_shapes(wan):
    folder, model = wan
    assert type(model).__name__ == "WanModel" and model.video
    assert model.latent_shape(SIZE) == (4, 8, 8)  # one latent frame: the shape a key is made for
    assert model.clip_shape(SIZE, FRAMES) == (4, 3, 8, 8)  # 1 + 4k frames -> 1 + k latent frames
    with pytest.raises(ModelError, match="1 \\+ 4k frames"):
        model.latent_frames(8)
    assert type(model.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert model.scheduler.config.shift == 3.0  # the checkpoint's UniPC flow_shift, kept


def test_the_pipelines_latents_invert_exactly_to_the_key_in_every_frame(wan):
    """WanPipeline generates from z_T (``latents=``, empty prompt, no guidance); ringmark's sampler
    lands where it lands; exact inversion of its latents gives back z_T, and the pooled clip test
    finds the key, in every latent frame; the same noise without the key is not flagged."""
    folder, model = wan
    key = new_key(model.name, model.latent_shape(SIZE), seed=3)
    frames = model.latent_frames(FRAMES)
    z_T = watermarked_latents(key, seeds=[0, 1], frames=frames)
    assert z_T.shape == (2, *model.clip_shape(SIZE, FRAMES))
    z_0 = model.pipe(prompt=["", ""], latents=z_T, num_frames=FRAMES, num_inference_steps=STEPS, height=SIZE,
                     width=SIZE, output_type="latent", guidance_scale=1.0).frames
    assert torch.allclose(model.sample(z_T, STEPS), z_0, atol=1e-4)
    schedule = model.schedule(STEPS, (8, 8))
    exact = ddim_invert(model.predict, z_0, schedule, exact=True, refine_iters=5, hold=model.hold)
    naive = ddim_invert(model.predict, z_0, schedule, hold=model.hold)
    assert nmse_db(exact, z_T) <= -30 and nmse_db(exact, z_T) < nmse_db(naive, z_T)
    for m in match_clip(exact, [key]):
        assert m.key_id == key.key_id and m.p_value < 1e-10 and len(m.frame_p_values) == frames
        assert max(m.frame_p_values) < 1e-10
    clean = watermarked_latents(key, seeds=[0, 1], frames=frames, watermark=False)
    assert all(m.p_value > 1e-3 for m in match_clip(clean, [key]))


def test_generate_returns_clips_in_0_1(wan):
    folder, model = wan
    key = new_key(model.name, model.latent_shape(SIZE), seed=4)
    clip = model.generate(watermarked_latents(key, seeds=[5], frames=model.latent_frames(5)), steps=2)
    assert clip.shape == (1, 5, 3, SIZE, SIZE) and 0 <= clip.min() and clip.max() <= 1


def test_a_clip_cut_short_still_carries_the_key_and_the_test_is_exact_however_frames_correlate():
    """Frames dropped or cut: what is left is tested on its own frames, same law. Without the key,
    the p-values are uniform for every number of frames, on independent frames and on a static clip
    (one noise in every frame, which a test pooling the frames as independent values would flag
    far too often), and on frames in between (KS, 400 clips each, 4 rand keys)."""
    key = new_key("video", (4, 16, 16), seed=11)
    z_T = watermarked_latents(key, seeds=range(4), frames=6)
    for kept in (z_T, z_T[:, :, ::2], z_T[:, :, 2:4], z_T[:, :, :1]):
        assert all(m.p_value < 1e-6 for m in match_clip(kept + 0.5 * torch.randn_like(kept), [key]))
    keys = [new_key("video", (4, 16, 16), seed=100 + j) for j in range(4)]
    g = torch.Generator().manual_seed(0)
    for n_frames, shared in ((1, 0.0), (3, 0.0), (6, 0.0), (6, 1.0), (6, 0.8)):
        common = torch.randn(400, 4, 1, 16, 16, generator=g)
        noise = shared * common + (1 - shared**2) ** 0.5 * torch.randn(400, 4, n_frames, 16, 16, generator=g)
        p = [m.raw_p_value for k in keys for m in match_clip(noise[k.seed % 4 :: 4], [k])]
        assert stats.kstest(p, "uniform").pvalue > 1e-3, (n_frames, shared)
    with pytest.raises(ValueError, match="B, C, F, H, W"):
        match_clip(torch.zeros(1, 4, 16, 16), [key])


def test_decoder_inversion_runs_on_clips(wan):
    """The inversion methods take clips as they take images (they see callables and tensors only)."""
    folder, model = wan
    x = model.decode(torch.randn(1, *model.clip_shape(32, 5)))
    assert x.shape == (1, 3, 5, 32, 32)
    for method in ("fixed_point", "adam", "gradient"):
        z, record = invert_decoder(method, model.encode, model.decode, x, iters=2)
        assert z.shape == (1, 4, 2, 4, 4) and torch.isfinite(z).all() and record.pixel_error.shape[0] >= 1


def test_two_expert_wan_checkpoints_are_refused_with_one_line(wan, tmp_path):
    folder, _ = wan
    copy = tmp_path / "wan22"
    shutil.copytree(folder, copy)
    shutil.copytree(copy / "transformer", copy / "transformer_2")
    index = json.loads((copy / "model_index.json").read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    (copy / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="two-expert") as e:
        load_model(str(copy))
    assert "\n" not in str(e.value)


def test_video_cost_fits_a_line_per_method_and_extrapolates_from_two_sizes():
    # peak = 60 + pixels x (0.01 + 0.02 x frames) for the gradient, flat for the fixed point
    peak = {"gradient": lambda s, f: 60 + s * s * (0.01 + 0.02 * f), "fixed_point": lambda s, f: 80 + s * s * 0.01,
            "floor": lambda s, f: 70.0}
    rows = [{"method": m, "frames": f, "size": s, "peak_mb_above_model": peak[m](s, f)}
            for m in peak for s in (64, 128) for f in (1, 5, 9)]
    fit = video_inversion.fits(rows)
    assert set(fit) == {"fixed_point", "gradient"}  # the floor is a reference, not a method
    g = fit["gradient"]
    assert g["by_size"][64]["mb_per_frame"] == pytest.approx(0.02 * 64 * 64)
    assert g["by_size"][64]["frames_in_budget"] == int((24 * 1024 - 60 - 0.01 * 64 * 64) // (0.02 * 64 * 64))
    assert g["model"]["mb_per_pixel_frame"] == pytest.approx(0.02) and g["model"]["mb_constant"] == pytest.approx(60)
    wide = 480 * 832
    assert g["frames_in_budget_480x832"] == max(0, int((24 * 1024 - 60 - wide * 0.01) // (wide * 0.02)))
    assert fit["fixed_point"]["by_size"][128]["frames_in_budget"] is None  # no growth with frames seen
    one = video_inversion.fits([r for r in rows if r["size"] == 64])
    assert one["gradient"]["frames_in_budget_480x832"] is None  # one size cannot separate pixels from constants
    md = "\n".join(video_inversion.markdown([], one))
    assert "no limit seen" in md and "one size only" in md


def test_bench_inversion_video_refuses_clip_lengths_the_vae_cannot_take(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--video", "--frames", "1,4", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "1 + 4k frames" in result.output and "[4]" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.slow  # a process per method and clip length (about a minute on 2 cores)
def test_bench_inversion_video_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--video", "--quick", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "inversion_video.json").read_text())
    assert {(r["method"], r["frames"]) for r in res["cost"]} == {(m, f) for m in video_inversion.METHODS for f in (1, 5)}
    assert all("error" not in r and r["seconds_per_iter"] > 0 and r["peak_mb_above_model"] > 0 for r in res["cost"])
    assert np.isclose(next(r for r in res["cost"] if r["method"] == "gradient")["memory_vs_gradient"], 1.0)
    assert "Frames in 24 GB" in (tmp_path / "inversion_video.md").read_text()
    assert {(r["method"], r["frames"]) for r in res["per_frame_cost"]} == {(m, f) for m in video_inversion.METHODS
                                                                            for f in (1, 5)}
    assert res["accuracy"]["frames"] == 2 and "Time to the gradient method's NMSE" in (
        tmp_path / "inversion_video.md").read_text()


def test_time_to_the_gradient_methods_nmse_on_a_clip():
    """``video_accuracy``: the gradient method read at each budget, in time order, on a clip of tiny
    latents; each gradient-free method's first iterate at or below that NMSE, timed, or none when
    its best stays above it; and where each settles."""
    from watermark.bench import video_accuracy

    res = video_accuracy.accuracy(2, budgets=(1, 3), free_iters=3, log=lambda line: None)
    grad = res["gradient"]
    assert [g["iters"] for g in grad] == [1, 3] and grad[1]["seconds"] > grad[0]["seconds"] > 0
    assert len(res["free"]) == len(video_accuracy.FREE) * 2
    for r in res["free"]:
        if r["seconds"] is None:
            assert r["best_nmse_db"] > r["target_nmse_db"]
        else:
            assert 0 <= r["iters"] <= 3 and r["time_vs_gradient"] > 0 and r["best_nmse_db"] <= r["target_nmse_db"]
    for r in res["plateau"]:
        assert r["nmse_db"] <= r["best_nmse_db"] + video_accuracy.PLATEAU_DB and r["iters"] <= 3
    assert res["frames"] == 2 and "| 3 |" in "\n".join(video_accuracy.markdown(res))


def test_embed_writes_clips_and_verify_reads_them(wan, tmp_path):
    """keygen -> embed (H.264 MP4 and lossless FFV1) -> verify, through the command line: each clip
    gets one row with the p-value ``pipeline.detect`` gives its frames, and a p per latent frame;
    an image is a clip of one frame; a broken video gets a one-line error and the others go on."""
    from watermark import api
    from watermark.io.videos import load_video
    from watermark.pipeline import Decision, Recovery, detect

    folder, model = wan
    run = CliRunner()
    key = tmp_path / "k.json"
    assert run.invoke(main, ["keygen", "--model", str(folder), "--size", str(SIZE), "-o", str(key)]).exit_code == 0
    for out, extra in (("mp4", []), ("mkv", ["--lossless"])):
        result = run.invoke(main, ["embed", "--key", str(key), "-o", str(tmp_path / out), "-n", "2", "--frames", "5",
                                   "--steps", "2", *extra])
        assert result.exit_code == 0, result.output
        assert "wrote 2 watermarked clips" in result.output
        assert sorted(p.name for p in (tmp_path / out).iterdir()) == ["00000." + out, "00001." + out, "manifest.jsonl"]
    made = [json.loads(line) for line in (tmp_path / "mkv" / "manifest.jsonl").read_text().splitlines()]
    assert [m["frames"] for m in made] == [5, 5]
    lossless = load_video(tmp_path / "mkv" / "00000.mkv", SIZE)
    assert lossless.image.shape == (3, 5, SIZE, SIZE) and lossless.model == str(folder)
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    still = tmp_path / "still.png"
    from PIL import Image
    Image.new("RGB", (SIZE, SIZE), (90, 120, 150)).save(still)
    result = run.invoke(main, ["verify", str(tmp_path / "mp4"), str(tmp_path / "mkv" / "00000.mkv"), str(still),
                               str(tmp_path / "broken.mp4"), "--key", str(key), "--json"])
    assert result.exit_code == 2, result.output  # some input could not be read (the exit codes of verify)
    rows = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert rows[str(tmp_path / "broken.mp4")]["error"] == "not a video PyAV can read (Invalid data found when processing input)"
    assert len(rows[str(still)]["frame_p_values"]) == 1 and "a clip of 1 frame" in rows[str(still)]["note"]
    clip_row = rows[str(tmp_path / "mkv" / "00000.mkv")]
    assert len(clip_row["frame_p_values"]) == 2 and "5 frames" in clip_row["note"]
    expected = detect(model, lossless.image[None], [api._as_key(key)], Recovery(), Decision())[0]
    assert clip_row["p_value"] == pytest.approx(expected.p_value, rel=1e-6)
    assert rows[str(tmp_path / "mp4" / "00001.mp4")]["error"] is None


def test_video_options_are_refused_where_they_do_not_apply(wan, tmp_path):
    folder, _ = wan
    run = CliRunner()
    assert run.invoke(main, ["keygen", "--model", str(folder), "--size", str(SIZE), "-o", str(tmp_path / "v.json")]).exit_code == 0
    assert run.invoke(main, ["keygen", "-o", str(tmp_path / "i.json")]).exit_code == 0
    result = run.invoke(main, ["embed", "--key", str(tmp_path / "i.json"), "-o", str(tmp_path / "a"), "--frames", "5"])
    assert result.exit_code != 0 and "video models" in result.output and not (tmp_path / "a").exists()
    result = run.invoke(main, ["embed", "--key", str(tmp_path / "v.json"), "-o", str(tmp_path / "b"), "--frames", "6"])
    assert result.exit_code != 0 and "1 + 4k frames" in result.output and not (tmp_path / "b").exists()
    result = run.invoke(main, ["embed", "--key", str(tmp_path / "v.json"), "-o", str(tmp_path / "c"), "--frames", "5",
                               "--log", str(tmp_path / "log.sqlite")])
    assert result.exit_code != 0 and "not logged or signed yet" in result.output and not (tmp_path / "c").exists()
    clip = tmp_path / "clip.mkv"
    from watermark.io.videos import save_video
    save_video(torch.rand(5, 3, 32, 32), clip, lossless=True)
    result = run.invoke(main, ["verify", str(clip), "--key", str(tmp_path / "i.json"), "--json"])
    row = json.loads(result.stdout.splitlines()[0])
    assert "keys are for an image model" in row["error"]


def test_video_attacks_do_what_they_say(tmp_path):
    """Each edit on a 9-frame clip: the frames and frame rate written, and what re-encoding costs."""
    from watermark.bench.video_attacks import VIDEO_ATTACKS, attack_clip
    from watermark.io.videos import load_video

    av = pytest.importorskip("av")
    t = torch.linspace(0, 1, 64)
    frames = torch.stack([torch.stack([(t[None, :] + t[:, None] + f / 9) % 1] * 3) for f in range(9)])  # a moving ramp

    def written(name):
        path = tmp_path / f"{name}.mp4"
        n = attack_clip(frames, name, path)
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
        clip = (load_video(path, 64).image + 1) / 2  # (3, F, H, W) in [0, 1]
        assert clip.shape[1] == n
        return n, float(rate), clip.transpose(0, 1)

    n, rate, none = written("none")
    assert (n, rate) == (9, 16.0)
    errors = [float((written(f"crf {c}")[2] - frames).abs().mean()) for c in (23, 28, 35)]
    assert errors[0] < errors[1] < errors[2]  # a higher rate factor, a coarser clip
    n, rate, dropped = written("frame drop")
    assert (n, rate) == (5, 8.0) and float((dropped - frames[::2]).abs().mean()) < 0.02
    n, _, cut = written("temporal crop")
    assert n == 4 and float((cut - frames[2:6]).abs().mean()) < 0.02
    n, rate, faster = written("frame rate 24")
    assert (n, rate) == (13, 24.0) and float((faster[1] - frames[0]).abs().mean()) < 0.02  # frame 1 shows time 1/24
    n, _, cropped = written("crop and resize")
    assert n == 9 and float((cropped - frames).abs().mean()) > 0.05
    assert set(VIDEO_ATTACKS) >= {"crf 28", "frame drop", "temporal crop"}
    with pytest.raises(ValueError, match="attack must be one of"):
        attack_clip(frames, "sepia", tmp_path / "x.mp4")
