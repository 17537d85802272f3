"""`ringmark scan` on a local Ray (2 CPUs): rows equal `verify --json`, corrupt files are rows,
and a scan killed halfway resumes without duplicates."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from conftest import same_result

from watermark.cli import main
from watermark.io.results import ResultsError, ResultsFile


def read_rows(path):
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return [json.loads(line) for line in open(path)]


# Parquet through a URI in the default suite; JSON lines through a path (50 s more) behind the slow marker
@pytest.mark.parametrize("suffix, uri", [pytest.param(".jsonl", False, marks=pytest.mark.slow), (".parquet", True)])
def test_rows_equal_verify_json(ray_local, scale_world, tmp_path, suffix, uri):
    """A folder, and the same folder as a file:// URI (read through pyarrow's filesystems, as s3:// is)."""
    root, images, reference = scale_world
    output = tmp_path / f"results{suffix}"
    source = f"file://{images}" if uri else str(images)
    result = CliRunner().invoke(main, ["scan", source, "--key", str(root / "key.json"), "-o", str(output),
                                       "--workers", "2", "--batch", "2", "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = read_rows(output)
    assert all(r["path"].startswith("file:///") == uri for r in rows)
    for row in rows:
        row["path"] = row["path"].removeprefix("file://")
    assert sorted(r["path"] for r in rows) == sorted(reference)  # every image once
    for row in rows:
        assert same_result(row, reference[row["path"]]), (row, reference[row["path"]])
    assert {k: summary[k] for k in ("images", "skipped", "watermarked", "errors", "workers")} == {
        "images": 9, "skipped": 0, "watermarked": 3, "errors": 3, "workers": 2}
    assert not output.with_name(output.name + ".parts").exists()

    again = CliRunner().invoke(main, ["scan", source, "--key", str(root / "key.json"), "-o", str(output)])
    assert again.exit_code == 0 and "skipping 9 images already in" in again.stderr
    assert json.loads(again.stdout)["images"] == 0 and len(read_rows(output)) == 9
    other = CliRunner().invoke(main, ["scan", source, "--key", str(root / "key.json"), "-o", str(output),
                                      "--search", "none"])
    assert other.exit_code == 2 and "written with other search; rerun with those, or use --force" in other.stderr


@pytest.mark.slow  # 50-60 s: a scan process killed and resumed; the resume logic's rows: test_results_file_checks
def test_killed_scan_resumes_without_duplicates(ray_local, scale_world, tmp_path):
    """A scan in its own process is killed (SIGKILL) after its first rows; the rerun skips them."""
    root, images, reference = scale_world
    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "watermark", "scan", str(images), "--key", str(root / "key.json"), "-o",
               str(output), "--workers", "1", "--batch", "1", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # its own local Ray
    child = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if output.exists() and output.read_text().count("\n") >= 5:  # 3 unreadable files + 2 images
            break
        time.sleep(0.2)
    assert child.poll() is None, "the scan ended before it could be killed"
    os.killpg(child.pid, signal.SIGKILL)  # the scan and the Ray it started, as in a crash
    child.wait()
    before = len(read_rows(output))
    assert 5 <= before < 9

    result = CliRunner().invoke(main, ["scan", str(images), "--key", str(root / "key.json"), "-o", str(output),
                                       "--workers", "2"], catch_exceptions=False)
    assert result.exit_code == 0 and f"skipping {before} images already in" in result.stderr
    rows = read_rows(output)
    assert sorted(r["path"] for r in rows) == sorted(reference)
    assert all(same_result(row, reference[row["path"]]) for row in rows)


def test_results_file_checks(tmp_path, scale_world):
    root, images, _ = scale_world
    cut = tmp_path / "cut.jsonl"
    cut.write_text('{"path": "a.png", "alpha": 0.01}\n{"path": "b.p')  # a crash in the middle of a line
    assert [r["path"] for r in ResultsFile(cut).rows()] == ["a.png"] and cut.read_text().endswith("}\n")
    other = tmp_path / "mine.jsonl"
    other.write_text('["a user\'s own data"]\n')
    with pytest.raises(ResultsError, match="line 1 is not a ringmark result; use --force"):
        ResultsFile(other).rows()
    assert ResultsFile(other, force=True).rows() == [] and other.read_text() == ""
    with pytest.raises(ResultsError, match="cannot write here"):  # before any image is verified
        ResultsFile("/proc/results.jsonl")
    # rows made with other keys (the same number of them) are not mixed with new ones
    mine = ResultsFile(tmp_path / "keys.jsonl")
    settings = {"inversion": "encoder", "ddim_steps": 10, "exact": False, "alpha": 0.01, "keys_tested": 1,
                "keys": ["aaaa"]}
    mine.check_settings(settings, [])
    mine.check_settings(settings, [])  # the same settings: fine
    with pytest.raises(ResultsError, match="written with other keys"):
        ResultsFile(tmp_path / "keys.jsonl").check_settings({**settings, "keys": ["bbbb"]}, [])
    # a results file from other settings, without its settings file, is judged by its rows
    settings = tmp_path / "old.jsonl"
    settings.write_text(json.dumps({"path": "x.png", "inversion": "encoder", "ddim_steps": 50, "exact": False,
                                    "alpha": 0.01, "keys_tested": 1}) + "\n")
    result = CliRunner().invoke(main, ["scan", str(images), "--key", str(root / "key.json"), "-o", str(settings)])
    assert result.exit_code == 2 and "written with other settings" in result.stderr
    assert "Traceback" not in result.output


def test_a_worker_turns_any_failure_into_rows(scale_world, monkeypatch):
    """Not only ImageError: whatever breaks one file is that file's row, and a batch that fails as
    a whole gives each of its images an error row; the other files keep their verdicts (issue 22)."""
    import numpy as np

    from watermark.io.keyfile import load_key
    from watermark.pipeline import Decision, Recovery
    from watermark.scale import scan

    root, images, reference = scale_world
    files = [str(images / "wm" / "00000.png"), str(images / "wm" / "00001.png")]
    batch = {"path": np.array(files), "bytes": [open(f, "rb").read() for f in files]}
    worker = scan.ScanWorker([load_key(root / "key.json")], Recovery(), Decision(), device="cpu", dtype="float32",
                             threads=1)
    real = scan.decode_image

    def flaky(data, size):
        if data == batch["bytes"][1]:
            raise MemoryError("decoder ran out")
        return real(data, size)

    monkeypatch.setattr(scan, "decode_image", flaky)
    rows = worker(batch).to_pylist()
    assert rows[0]["watermarked"] is True and rows[0]["error"] is None
    assert rows[1]["watermarked"] is None and rows[1]["error"] == "cannot read (MemoryError: decoder ran out)"
    monkeypatch.setattr(scan, "decode_image", real)
    monkeypatch.setattr(worker.verifier, "run", lambda items: 1 / 0)
    rows = worker(batch).to_pylist()
    assert [r["error"] for r in rows] == ["verification failed (ZeroDivisionError: division by zero)"] * 2
