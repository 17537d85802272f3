"""The bundled tiny-video (watermark/models/tiny-video/README.md): it loads offline by name, and
its own clips, written as MP4 by embed, are found watermarked by verify while the same noise
without the key is not; bench detect --video runs through verify on it."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from watermark.cli import main
from watermark.models import get_model, makes_video


def test_tiny_video_loads_by_name_as_a_video_model():
    model = get_model("tiny-video")
    assert makes_video("tiny-video") and type(model).__name__ == "TextToVideoModel"
    assert (model.default_size, model.default_frames, model.default_guidance) == (64, 8, 1.0)
    assert model.latent_shape(64) == (4, 16, 16) and model.clip_shape(64, 8) == (4, 8, 16, 16)


def test_embed_then_verify_finds_the_key_in_tiny_videos_own_clips(tmp_path):
    run = CliRunner()
    key = tmp_path / "k.json"
    assert run.invoke(main, ["keygen", "--model", "tiny-video", "-o", str(key)]).exit_code == 0
    for out, extra in (("wm", []), ("clean", ["--no-watermark"])):
        result = run.invoke(main, ["embed", "--key", str(key), "-o", str(tmp_path / out), "-n", "2", "--steps", "20",
                                   *extra])
        assert result.exit_code == 0, result.output
    result = run.invoke(main, ["verify", str(tmp_path / "wm"), str(tmp_path / "clean"), "--key", str(key), "--json"])
    rows = {r["path"].split("/")[-2] + "/" + r["path"].split("/")[-1]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == 4 and all(r["error"] is None for r in rows.values()), result.output
    for name in ("00000.mp4", "00001.mp4"):
        assert rows["wm/" + name]["watermarked"] and rows["wm/" + name]["p_value"] < 1e-4
        assert not rows["clean/" + name]["watermarked"]
        assert len(rows["wm/" + name]["frame_p_values"]) == 8


def test_bench_detect_video_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "detect", "--video", "--quick", "--video-attacks", "none,frame drop",
                                       "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "detect_video.json").read_text())
    assert res["model"] == "tiny-video" and res["n"] == 4 and set(res["rows"]) == {"none", "frame drop"}
    for kind in ("watermarked", "clean"):
        assert all(len(p) == 4 and all(0 <= v <= 1 for v in p) for p in res["p_values"][kind].values())
    assert "| frame drop |" in (tmp_path / "detect_video.md").read_text()
    for attack, row in res["rows"].items():  # the summary is the p-values': smaller p, higher score
        wm, clean = (np.array(res["p_values"][kind][attack]) for kind in ("watermarked", "clean"))
        pairs = (wm[:, None] < clean[None]) + 0.5 * (wm[:, None] == clean[None])
        assert row["auc"] == pytest.approx(pairs.mean())
        assert row["tpr_at_alpha"] == pytest.approx((wm <= 0.01).mean())
        assert row["clean_flagged"] == int((clean <= 0.01).sum())


def test_bench_detect_video_refuses_the_study_and_image_models():
    result = CliRunner().invoke(main, ["bench", "detect", "--video", "--study"])
    assert result.exit_code == 2 and "separate benchmarks" in result.output
    result = CliRunner().invoke(main, ["bench", "detect", "--video", "--model", "tiny-sd"])
    assert result.exit_code == 2 and "'tiny-sd' makes images" in result.output
