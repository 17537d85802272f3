"""The benchmark commands run end to end in --quick mode, so their code cannot rot."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

from watermark.bench.attacks import ATTACKS
from watermark.cli import main


@pytest.mark.slow  # bench inversion end to end (84 s); test_bench_inversion_keeps_finished_rows_when_stopped runs it in CI
def test_bench_inversion_quick(tmp_path):
    # the cost runs (a process per method) are test_bench_inversion_cost_only's
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--skip-cost", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "inversion.json").read_text())
    methods = {r["method"] for r in res["accuracy"]}
    assert {"encoder", "gradient lr0.1 cosine", "gradient lr0.01 fixed", "fixed_point rho0.5", "inertial_km",
            "adam lr0.01", "anderson rho0.5"} <= methods
    assert all(math.isfinite(r["nmse_db"]) and r["ci95"][0] <= r["nmse_db"] <= r["ci95"][1] for r in res["accuracy"])
    assert res["cost"] == []
    side, = res["side_by_side"]  # the reference's 20 iterations against each method, on tiny
    assert side["model"] == "tiny" and set(side["reference"]) == {"as written", "posterior mean"}
    assert {r["method"] for r in side["methods"]} == {"encoder", "fixed_point", "anderson", "adam"}
    assert all(math.isfinite(r["nmse_db"]) and r["seconds"] > 0 for r in side["reference"].values())
    assert "Side by side" in result.stdout
    assert "| method |" in result.stdout and (tmp_path / "inversion.md").exists()
    assert not (tmp_path / "inversion.partial.json").exists()
    assert torch.is_grad_enabled()  # the benchmark left the process's grad mode as it found it


@pytest.mark.slow  # the cost runs (86 s)
def test_bench_inversion_cost_only(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--skip-accuracy", "--skip-reference", "-o",
                                       str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "inversion.json").read_text())
    assert res["accuracy"] == [] and res["side_by_side"] == [] and len(res["cost"]) == 7
    cost = {r["method"]: r for r in res["cost"]}
    assert set(cost) == {"floor", "fixed_point", "inertial_km", "adam", "anderson", "reference", "gradient"}
    assert all("error" not in r and r["seconds_per_iter"] > 0 and "time_vs_floor" in r for r in cost.values())
    assert "Accuracy" not in (tmp_path / "inversion.md").read_text()


@pytest.mark.slow  # bench detect with the search (140 s); test_bench_detect_keeps_finished_stages_when_stopped runs it in CI
def test_bench_detect_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "detect", "--quick", "--batch", "3", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    assert torch.is_grad_enabled()  # the benchmark left the process's grad mode as it found it
    res = json.loads((tmp_path / "detect.json").read_text())
    assert res["batch"] == 3  # 4 images per class: a full batch and a partial one
    assert res["n"] == 4 and res["keys"] == 16 and res["transforms"] == 414
    assert set(res["robustness"]) == {"search all", "search none"}
    for rows in res["robustness"].values():
        assert set(rows) >= {"none", "rotation", "jpeg", "crop", "blur", "noise", "brightness", "mean_attacked_auc",
                             "mean_attacked_tpr_at_1pct_fpr", "foreign_key_flagged"}
        assert all(0 <= rows[a]["auc"] <= 1 and len(rows[a]["p_wm"]) == 4 for a in ATTACKS)
    for row in res["identification"].values():
        assert all(0 <= v <= 1 for v in row.values()) and row["identified_at_alpha"] <= row["accuracy"]
    assert len(res["patterns"]) == 2 and all(0 <= p["mean_abs_cosine"] <= 1 for p in res["patterns"].values())
    assert {k for k in res["sweep"] if k != "seconds_per_part"} == {"0,1", "0,2", "1,1", "1,2"}
    # the forward step really ran: its iterations cost time
    assert res["sweep"]["seconds_per_part"]["iteration"] > 0
    assert res["sweep"]["1,1"]["seconds_per_image"] > res["sweep"]["0,1"]["seconds_per_image"]
    assert res["verify"]["default"] > 0 and res["verify"]["previous_default"] > 0
    md = (tmp_path / "detect.md").read_text()
    assert "among 16 keys" in md and "on the front" in md and "previous defaults" in md
    assert not (tmp_path / "detect.partial.json").exists()  # written after each stage, removed at the end


def test_bench_inversion_float16_needs_cuda(tmp_path):
    result = CliRunner().invoke(main, ["bench", "inversion", "--quick", "--device", "cpu", "--dtypes", "float16",
                                       "-o", str(tmp_path)])
    assert result.exit_code == 2 and "float16 needs a CUDA device" in result.output
    assert not (tmp_path / "inversion.json").exists()


def test_bench_detect_keeps_finished_stages_when_stopped(tmp_path, monkeypatch):
    """Stopped as a time limit would, in the pattern stage: robustness and identification, finished,
    are kept. One of the six attacks (``--attacks``), the unattacked images always."""
    from watermark.bench import detect as bench_detect

    monkeypatch.setattr(bench_detect, "make_images", _stop_after(bench_detect.make_images, 2, _interrupt))
    result = CliRunner().invoke(main, ["bench", "detect", "--quick", "--search", "none", "--attacks", "jpeg", "-o",
                                       str(tmp_path), "-q"])
    assert result.exit_code != 0 and not (tmp_path / "detect.json").exists()
    partial = json.loads((tmp_path / "detect.partial.json").read_text())
    assert set(partial["robustness"]) == {"search none"} and set(partial["identification"]) == {"none", "jpeg"}
    assert {a for a in partial["robustness"]["search none"] if a in ATTACKS} == {"none", "jpeg"}
    assert partial["patterns"] == {} and partial["sweep"] == {}
    assert partial["command"].startswith("ringmark bench detect")


def test_bench_detect_refuses_an_unknown_attack(tmp_path):
    result = CliRunner().invoke(main, ["bench", "detect", "--attacks", "jpeg,sepia", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "sepia" in result.output and "Traceback" not in result.output


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


@pytest.mark.slow  # the study (113 s)
def test_bench_detect_study_quick(tmp_path):
    """The decision study (issue 21) on the SD-faithful model: every recovery scored on the same
    images, paired against the encoder."""
    result = CliRunner().invoke(main, ["bench", "detect", "--study", "--model", "tiny-sd", "--quick", "--recoveries",
                                       "encoder,fixed_point:10,gradient:10", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "study.json").read_text())
    assert res["model"] == "tiny-sd" and res["n"] == 4 and list(res["recoveries"]) == ["encoder", "fixed_point:2",
                                                                                      "gradient:2"]
    for row in res["recoveries"].values():
        assert set(row["attacks"]) == set(ATTACKS) and row["seconds_per_image"] > 0
        for a in ATTACKS:
            r = row["attacks"][a]
            assert len(r["p_wm"]) == len(r["p_clean"]) == len(r["three_key_correct"]) == 4
            assert 0 <= r["auc"] <= 1 and 0 <= r["three_key_accuracy"] <= 1
    # iterating costs time, and the paired tests compare each method with the encoder
    assert res["recoveries"]["fixed_point:2"]["seconds_per_image"] > res["recoveries"]["encoder"]["seconds_per_image"]
    assert set(res["paired"]) == {"fixed_point:2", "gradient:2"}
    assert all(0 <= c["wilcoxon_p"] <= 1 and 0 <= c["three_key_p"] <= 1 for cmp in res["paired"].values()
               for c in cmp.values())
    assert "| recovery |" in result.stdout and not (tmp_path / "study.partial.json").exists()


def test_bench_detect_study_refuses_a_bad_recovery(tmp_path):
    for bad, message in (("fixed_point", "positive iteration count"), ("encoder:5", "no iterations"),
                         ("newton:3", "must be one of")):
        result = CliRunner().invoke(main, ["bench", "detect", "--study", "--recoveries", bad, "-o", str(tmp_path)])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.slow  # bench null (52 s)
def test_bench_null_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "null", "--quick", "--model", "tiny", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "tiny.json").read_text())
    assert res["rule"].startswith("pipeline.detect") and set(res["null_models"]) == {"first", "second", "edited"}
    for name in ("clean", "jpeg", "blur"):  # and "photographs" with the train extra
        for side in ("with_null", "without"):
            row = res["sets"][name][side]
            assert row["keys"] == 6 and 0 <= row["worst"] <= 1 and set(row["per_spec"]) >= {"rand", "ring ch0"}


@pytest.mark.slow  # bench security (81 s+)
def test_bench_security_quick(tmp_path):
    result = CliRunner().invoke(main, ["bench", "security", "--quick", "--model", "tiny", "-o", str(tmp_path), "-q"])
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "tiny.json").read_text())
    assert res["null_model"] and 0 <= res["baseline"]["tpr"] <= 1
    assert set(res["regeneration"]) == {"vae", "diffusion 0.3"} and set(res["averaging"]) == {"2"}
    assert {"fresh_keys_forgery_success", "fresh_keys_forgery_success_one_key_rule"} <= set(res["averaging"]["2"])
    assert {"forgery of model images", "removal"} <= set(res["imprinting"])
    assert "genuine, jpeg" in res["consistency"] and "averaging forgery M=2" in res["consistency"]
    prov = res["provenance"]
    assert prov["logged"] == 4 and set(prov["genuine"]) >= {"jpeg", "rotation 20", "pooled"}
    assert set(prov["imprinting forgery"]) >= {"model images"} and set(prov["averaging forgery"]) == {"2"}
    assert set(prov["adaptive forger"]) == {"30 dB", "25 dB", "20 dB", "15 dB", "50 %"}
    assert all(0 <= r["confirmed"] <= r["watermarked"] <= 1 for r in prov["genuine"].values())


@pytest.mark.slow  # 5 min on 2 busy cores: the genuine images' edits and the forgeries before the stop
def test_bench_security_provenance_only_keeps_its_rows_when_stopped(tmp_path, monkeypatch):
    """--provenance-only runs no imprinting removal (provenance does not judge it) and, stopped in the
    adaptive forger as a time limit would, leaves the rows it finished in <model>-provenance.partial.json."""
    from watermark.bench import forgery

    monkeypatch.setattr(forgery, "imprint", _stop_after(forgery.imprint, 0, _interrupt))
    result = CliRunner().invoke(main, ["bench", "security", "--quick", "--model", "tiny", "--provenance-only",
                                       "--adaptive-psnr", "20", "-o", str(tmp_path), "-q"])
    assert result.exit_code != 0 and not (tmp_path / "tiny-provenance.json").exists()
    partial = json.loads((tmp_path / "tiny-provenance.partial.json").read_text())
    assert "removal" not in partial["imprinting"] and "forgery of model images" in partial["imprinting"]
    prov = partial["provenance"]
    assert prov["logged"] == 4 and set(prov["averaging forgery"]) == {"2"} and "adaptive forger" not in prov
    assert "command" in partial


def test_bench_security_refuses_bad_psnr_floors(tmp_path):
    result = CliRunner().invoke(main, ["bench", "security", "--adaptive-psnr", "30,loud", "-o", str(tmp_path)])
    assert result.exit_code == 2 and "PSNR" in result.output and "Traceback" not in result.output
