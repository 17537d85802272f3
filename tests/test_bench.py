"""The benchmark commands run end to end in --quick mode, so their code cannot rot."""

import json
import math

import numpy as np
from click.testing import CliRunner

from watermark.cli import main


def test_bench_inversion_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "inversion.json").read_text())
    methods = {r["method"] for r in res["accuracy"]}
    assert {"encoder", "gradient lr0.1 cosine", "gradient lr0.01 fixed", "fixed_point rho0.5", "inertial_km",
            "adam lr0.01"} <= methods
    assert all(math.isfinite(r["nmse_db"]) and r["ci95"][0] <= r["nmse_db"] <= r["ci95"][1] for r in res["accuracy"])
    cost = {r["method"]: r for r in res["cost"]}
    assert set(cost) == {"floor", "fixed_point", "inertial_km", "adam", "gradient"}
    assert all("error" not in r and r["seconds_per_iter"] > 0 and "time_vs_floor" in r for r in cost.values())
    assert "| method |" in result.stdout and (tmp_path / "inversion.md").exists()
    assert not (tmp_path / "inversion.partial.json").exists()


def test_bench_inversion_cost_only(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--skip-accuracy", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "inversion.json").read_text())
    assert res["accuracy"] == [] and len(res["cost"]) == 5
    assert "Accuracy" not in (tmp_path / "inversion.md").read_text()


def test_bench_detect_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "detect", "--quick", "--batch", "3", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "detect.json").read_text())
    assert res["batch"] == 3  # 4 images per class: a full batch and a partial one
    assert res["n"] == 4 and set(res["robustness"]) == {"encoder", "gradient", "fixed_point", "adam"}
    for rows in res["robustness"].values():
        assert set(rows) >= {"none", "rotation", "jpeg", "crop", "blur", "noise", "brightness", "mean_attacked_auc"}
        assert all(0 <= rows[a]["auc"] <= 1 and len(rows[a]["p_wm"]) == 4 for a in rows if a != "mean_attacked_auc")
    assert all(0 <= v <= 1 for v in res["identification"].values())
    assert set(res["sweep"]) == {"1", "2"} and all(0 <= r["rows"]["none"]["auc"] <= 1 for r in res["sweep"].values())
    assert res["verify_seconds_per_image_default"] > 0
    assert (tmp_path / "detect.md").exists()
    assert not (tmp_path / "detect.partial.json").exists()  # written after each stage, removed at the end


def test_bench_inversion_float16_needs_cuda(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--device", "cpu", "--dtypes", "float16",
                                       "-o", str(tmp_path)])
    assert result.exit_code == 2 and "float16 needs a CUDA device" in result.output
    assert not (tmp_path / "inversion.json").exists()


def test_paired_vs_encoder_detects_a_uniform_improvement():
    from watermark.bench.detect import paired_vs_encoder

    rng = np.random.default_rng(0)
    p_enc = rng.uniform(1e-6, 1e-2, 30)
    res = {"robustness": {"encoder": {"none": {"p_wm": p_enc.tolist()}, "mean_attacked_auc": 1.0},
                          "better": {"none": {"p_wm": (p_enc * rng.uniform(0.01, 0.5, 30)).tolist()}},
                          "same": {"none": {"p_wm": p_enc.tolist()}}}}
    paired = paired_vs_encoder(res)
    assert paired["better"]["none"]["share_smaller_p"] == 1.0 and paired["better"]["none"]["wilcoxon_p"] < 1e-4
    assert paired["same"]["none"] == {"share_smaller_p": 0.0, "wilcoxon_p": 1.0}
    assert "encoder" not in paired


def test_bench_detect_keeps_finished_stages_when_stopped(tmp_path, monkeypatch):
    from watermark.bench import detect as bench_detect

    # stopped as a time limit would, in the identification stage
    monkeypatch.setattr(bench_detect, "make_images", _stop_after(bench_detect.make_images, 2, _interrupt))
    result = CliRunner().invoke(main, ["bench", "detect", "--quick", "--methods", "encoder", "--sweep", "",
                                       "-o", str(tmp_path), "-q"])
    assert result.exit_code != 0 and not (tmp_path / "detect.json").exists()
    partial = json.loads((tmp_path / "detect.partial.json").read_text())
    assert set(partial["robustness"]) == {"encoder"} and partial["identification"] == {}
    assert partial["command"].startswith("ringmark bench detect")


def _stop_after(fn, calls, then):
    """fn for the first ``calls`` calls, then ``then``."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        return fn(*args, **kwargs) if count["n"] <= calls else then(*args, **kwargs)

    return wrapped


def test_bench_inversion_keeps_finished_rows_when_stopped(tmp_path, monkeypatch):
    from watermark.bench import report

    monkeypatch.setattr(report, "nmse_db", _stop_after(report.nmse_db, 3, _interrupt))
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--skip-cost", "-o", str(tmp_path), "-q"])
    assert result.exit_code != 0 and not (tmp_path / "inversion.json").exists()
    partial = json.loads((tmp_path / "inversion.partial.json").read_text())
    # encoder (1 row), then the scheduled gradient method, one run per iteration count (2 rows)
    assert [(r["method"], r["iters"]) for r in partial["accuracy"]] == [
        ("encoder", 0), ("gradient lr0.1 cosine", 2), ("gradient lr0.1 cosine", 5)]


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt  # as a time limit would
