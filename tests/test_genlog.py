"""The generation log (``io.genlog``): embed --log records every image, never key material; several
processes write one SQLite file at once and lose no row; the same code runs on PostgreSQL (a real
server the test starts, skipped with the reason where PostgreSQL is not installed)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from watermark.cli import main
from watermark.io.genlog import Generation, GenerationLog, LogError


def row(i: int, key_id: str = "k0") -> Generation:
    return Generation(image_id=f"img{i:07d}", key_id=key_id, model="tiny", seed=i, prompt="", steps=50, guidance=None,
                      created="2026-12-03T00:00:00.000+00:00", file=f"{i:05d}.png", sha256=f"{i:064x}",
                      fingerprint=np.full(4, i % 7, np.float16), fingerprint_kind="latent8")


def test_embed_logs_every_image_without_key_material(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", "-o", str(tmp_path / "k.json"), "-q"]).exit_code == 0
    log = tmp_path / "gen.sqlite"
    result = runner.invoke(main, ["embed", "--key", str(tmp_path / "k.json"), "-o", str(tmp_path / "out"), "-n", "3",
                                  "--steps", "4", "--log", str(log), "-q"])
    assert result.exit_code == 0, result.output
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    key = json.loads((tmp_path / "k.json").read_text())
    logged = GenerationLog.open(log, create=False).by_key(key["key_id"])
    assert [g.image_id for g in logged] == [m["image_id"] for m in manifest]
    assert [g.sha256 for g in logged] == [m["sha256"] for m in manifest]
    images = [np.asarray(Image.open(tmp_path / "out" / m["file"]).convert("RGB"), float) / 127.5 - 1 for m in manifest]
    thumbnails = [im.reshape(16, 8, 16, 8, 3).mean((1, 3)).transpose(2, 0, 1).ravel() for im in images]  # 128 px
    assert all(g.fingerprint_kind == "pixels16" and np.allclose(g.fingerprint.astype(float), t, atol=2e-3)
               for g, t in zip(logged, thumbnails))  # each image's own 16 x 16 thumbnail
    assert str(key["seed"]).encode() not in log.read_bytes()  # the key's secret is not in the log
    assert all(os.stat(f).st_mode & 0o077 == 0 for f in tmp_path.glob("gen.sqlite*"))  # the -wal and -shm too
    # the rows go out and come back, in both formats; rows logged already are skipped
    for name in ("g.jsonl", "g.parquet"):
        assert runner.invoke(main, ["log", "export", str(log), str(tmp_path / name)]).exit_code == 0
        other = tmp_path / f"other-{name}.sqlite"
        assert json.loads(runner.invoke(main, ["log", "import", str(other), str(tmp_path / name)]).output)["imported"] == 3
        assert json.loads(runner.invoke(main, ["log", "import", str(other), str(tmp_path / name)]).output)["imported"] == 0
        back = GenerationLog.open(other).by_key(key["key_id"])
        assert [g.record() for g in back] == [g.record() for g in logged]
    # rebuilt from the folder: the same images, fingerprints made anew
    rebuilt = json.loads(runner.invoke(main, ["log", "rebuild", str(tmp_path / "r.sqlite"), str(tmp_path / "out")]).output)
    assert rebuilt["logged"] == 3
    again = GenerationLog.open(tmp_path / "r.sqlite").by_key(key["key_id"])
    assert all(np.allclose(a.fingerprint, b.fingerprint, atol=2e-3) for a, b in zip(again, logged))


def test_bad_logs_get_one_line_errors(tmp_path):
    runner = CliRunner()
    cases = [(["log", "list", str(tmp_path / "missing.sqlite")], "no such generation log"),
             (["log", "export", str(tmp_path / "missing.sqlite"), str(tmp_path / "x.jsonl")], "no such generation log")]
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    cases.append((["log", "list", str(tmp_path / "junk.sqlite")], "not a usable generation log"))
    log = GenerationLog.open(tmp_path / "g.sqlite")
    log.add([row(1)])
    (tmp_path / "taken.jsonl").write_text("mine\n")
    cases.append((["log", "export", str(tmp_path / "g.sqlite"), str(tmp_path / "taken.jsonl")], "--force"))
    cases.append((["log", "export", str(tmp_path / "g.sqlite"), str(tmp_path / "x.csv")], "must be one of"))
    (tmp_path / "bad.jsonl").write_text('{"image_id": "a", "colour": 1}\n')
    cases.append((["log", "import", str(tmp_path / "g.sqlite"), str(tmp_path / "bad.jsonl")], "not a generation-log"))
    cases.append((["log", "rebuild", str(tmp_path / "g.sqlite"), str(tmp_path)], "no manifest.jsonl"))
    for args, message in cases:
        result = runner.invoke(main, args)
        assert result.exit_code != 0 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert (tmp_path / "taken.jsonl").read_text() == "mine\n"
    with pytest.raises(LogError, match="already logged"):
        log.add([row(1)])


def _writer(where: str, first: int, n: int) -> None:
    log = GenerationLog.open(where)
    for i in range(first, first + n, 5):
        log.add([row(j, key_id=f"k{j % 3}") for j in range(i, min(first + n, i + 5))])


def _concurrent_embeds_lose_no_row(where: str, processes: int = 4, n: int = 60) -> GenerationLog:
    GenerationLog.open(where)  # the table, before the writers race
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_writer, args=(where, p * n, n)) for p in range(processes)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert [w.exitcode for w in workers] == [0] * processes
    log = GenerationLog.open(where)
    assert log.count() == processes * n
    assert len(log.by_key("k1")) == len([j for j in range(processes * n) if j % 3 == 1])
    return log


def test_concurrent_writers_lose_no_row_in_sqlite(tmp_path):
    _concurrent_embeds_lose_no_row(str(tmp_path / "gen.sqlite"))


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own, started for these tests, as a URL."""
    initdb = shutil.which("initdb") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))), None)
    if initdb is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    bin_dir = Path(initdb).parent
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: as its own user
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = Path(tempfile.mkdtemp(prefix="ringmark-pg-"))
    if as_user:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(as_user + [str(bin_dir / "initdb"), "-D", str(data / "db"), "-U", "ringmark", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-l", str(data / "log"), "-w", "-o",
                              f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://ringmark@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bin_dir / "pg_ctl"), "-D", str(data / "db"), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_the_same_log_runs_on_postgresql(postgres, tmp_path):
    """Concurrent writers, lookups, export and import through a PostgreSQL URL."""
    log = _concurrent_embeds_lose_no_row(postgres)
    found = log.by_key("k2")
    assert len(found) == 80
    assert log.export(tmp_path / "pg.jsonl") == 240
    copy = GenerationLog.open(tmp_path / "copy.sqlite")
    assert copy.import_(tmp_path / "pg.jsonl") == 240
    assert [g.record() for g in copy.by_key("k2")] == [g.record() for g in found]
