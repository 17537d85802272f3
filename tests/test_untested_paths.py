"""Paths no other test walks (issue 24): prompts from a file, embedding in several batches, the
networks in bfloat16, the model cache, the progress display, keyrings mixing patterns and radii,
and ``ringmark bench scale``.

The library is reached through the CLI (``ringmark ...``), ``watermark.api`` with keyword
arguments and ``watermark.models.get_model``; everything on the bundled ``tiny`` at its own size
with few steps (the watermark of a 32 px image of it is too small a ring to test), or on the tiny
SD-layout checkpoint of tests/conftest.py.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from watermark.cli import main

FEW = ["--steps", "2"]  # generation: the paths, not the quality, are under test
QUICK_VERIFY = ["--ddim-steps", "2", "--search", "none"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def pixels(path):
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


@pytest.fixture(scope="module")
def tiny_key(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-key")
    assert run("keygen", "-o", root / "key.json", "--seed", 3, "-q").exit_code == 0
    return root / "key.json"


# --- embed --prompts FILE ---------------------------------------------------------------------

def test_prompts_file_is_used_in_turn_on_a_conditional_model(sd_folder, tmp_path, monkeypatch):
    """Each image gets the next prompt of the file (blank lines skipped, whitespace stripped),
    round again when there are fewer prompts than images; the pipeline is handed exactly those."""
    from diffusers import StableDiffusionPipeline

    assert run("keygen", "-o", tmp_path / "k.json", "--model", sd_folder, "--size", 32, "--seed", 1,
               "-q").exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red house\n\n   a blue boat  \n")
    seen = []
    original = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.append(list(kwargs["prompt"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    result = run("embed", "--key", tmp_path / "k.json", "-o", tmp_path / "out", "-n", 3, "--prompts", prompts, *FEW,
                 "-q")
    assert result.exit_code == 0, result.output
    expected = ["a red house", "a blue boat", "a red house"]
    assert [m["prompt"] for m in manifest(tmp_path / "out")] == expected
    assert [r["prompt"] for r in lines(result)] == expected  # what embed prints is what it wrote
    assert sum(seen, []) == expected
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["00000.png", "00001.png", "00002.png"]


def test_prompts_file_errors(sd_folder, tiny_key, tmp_path):
    assert run("keygen", "-o", tmp_path / "k.json", "--model", sd_folder, "--size", 32, "--seed", 1,
               "-q").exit_code == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = [
        # an unconditional model takes no prompt, from a file either
        (("--key", tiny_key, "--prompts", prompts), "is unconditional: it takes no prompt"),
        (("--key", tmp_path / "k.json", "--prompts", empty), "no prompts in file"),
        (("--key", tmp_path / "k.json", "--prompts", prompts, "--prompt", "a dog"), "not both"),
    ]
    for args, match in cases:
        out = tmp_path / "never"
        result = run("embed", *args, "-o", out, *FEW)
        assert result.exit_code == 2 and match in result.stderr, (args, result.output)
        assert "Traceback" not in result.output and not out.exists(), args  # nothing written


# --- embed in several batches -------------------------------------------------------------------

def test_embed_more_images_than_a_batch_is_the_same_as_one_batch(tiny_key, tmp_path):
    """n = 3 in batches of 2 (a full one and a partial one): every file and manifest row, the
    seeds consecutive from --seed, and the same images as one batch of 8 makes (determinism
    across batching, to the 8-bit PNG: a convolution's float32 result depends on its batch)."""
    from watermark import api

    split = api.embed(str(tiny_key), str(tmp_path / "split"), n=3, seed=5, steps=2, batch=2)
    api.embed(str(tiny_key), str(tmp_path / "whole"), n=3, seed=5, steps=2, batch=8)
    assert [(g.file, g.seed) for g in split] == [("00000.png", 5), ("00001.png", 6), ("00002.png", 7)]
    assert [m["seed"] for m in manifest(tmp_path / "split")] == [5, 6, 7]
    same = lambda rows: [{k: v for k, v in r.items() if k not in ("image_id", "sha256")} for r in rows]  # noqa: E731
    assert same(manifest(tmp_path / "split")) == same(manifest(tmp_path / "whole"))  # ids are fresh; PNGs may differ
    assert len({m["image_id"] for m in manifest(tmp_path / "split") + manifest(tmp_path / "whole")}) == 6  # by 1 LSB
    assert sorted(p.name for p in (tmp_path / "split").iterdir()) == ["00000.png", "00001.png", "00002.png",
                                                                     "manifest.jsonl"]
    for g in split:
        a, b = pixels(tmp_path / "split" / g.file), pixels(tmp_path / "whole" / g.file)
        assert np.abs(a - b).max() <= 1 and (a != b).mean() < 0.01, (g.file, np.abs(a - b).max(), (a != b).mean())
    # and the seeds do matter: consecutive images differ
    assert np.abs(pixels(tmp_path / "split" / "00000.png") - pixels(tmp_path / "split" / "00001.png")).max() > 10


# --- bfloat16 ------------------------------------------------------------------------------------

def test_bfloat16_verify_decides_as_float32(tiny_key, tmp_path):
    """The networks in bfloat16 on the CPU: verify runs and decides as in float32 (2 watermarked,
    2 clean images). float16 on the CPU is not tested here: torch runs it, ~10x slower than float32."""
    import torch

    from watermark.models import get_model

    assert run("embed", "--key", tiny_key, "-o", tmp_path / "wm", "-n", 2, *FEW, "-q").exit_code == 0
    assert run("embed", "--key", tiny_key, "-o", tmp_path / "clean", "-n", 2, *FEW, "--no-watermark",
               "-q").exit_code == 0
    rows = {}
    for dtype in ("float32", "bfloat16"):
        result = run("verify", tmp_path / "wm", tmp_path / "clean", "--key", tiny_key, "--json", *QUICK_VERIFY,
                     "--device", "cpu", "--dtype", dtype)
        assert result.exit_code == 0, result.output
        rows[dtype] = lines(result)
    assert get_model("tiny", device="cpu", dtype="bfloat16").dtype == torch.bfloat16  # what that verify loaded
    decisions = {dtype: [(r["path"], r["watermarked"], r["error"]) for r in rs] for dtype, rs in rows.items()}
    assert decisions["bfloat16"] == decisions["float32"]
    assert [d[1] for d in decisions["float32"]] == [True, True, False, False]


# --- the model cache -------------------------------------------------------------------------------

@pytest.fixture
def model_cache(monkeypatch):
    """get_model's cache, emptied for the test and restored after it (other tests keep their
    loaded models); load_model replaced by a counter that makes a fresh object per load."""
    from watermark import models

    saved = list(models._LOADED.items())
    loads = []

    def fake_load(name="tiny", device="cpu", dtype="float32"):
        loads.append((name, device, dtype))
        return object()

    monkeypatch.setattr(models, "load_model", fake_load)
    models._LOADED.clear()
    try:
        yield models, loads
    finally:
        models._LOADED.clear()
        models._LOADED.update(saved)


def test_get_model_returns_the_same_object_per_name_device_and_dtype(model_cache):
    import torch

    models, loads = model_cache
    a = models.get_model("tiny", device="cpu", dtype="float32")
    assert models.get_model("tiny", device="cpu", dtype=torch.float32) is a  # a dtype by name or by torch
    if not torch.cuda.is_available():
        assert models.get_model("tiny", device="auto", dtype="float32") is a  # auto is the CPU here
    b = models.get_model("tiny", device="cpu", dtype="bfloat16")
    assert b is not a and models.get_model("tiny", device="cpu", dtype="bfloat16") is b
    assert len(loads) == 2


def test_get_model_keeps_the_most_recent_max_loaded(model_cache, monkeypatch):
    """At most MAX_LOADED models; the least recently asked for goes first, and comes back as a new load."""
    models, loads = model_cache
    monkeypatch.setattr(models, "MAX_LOADED", 2)
    a = models.get_model("tiny", device="cpu", dtype="float32")
    b = models.get_model("tiny", device="cpu", dtype="bfloat16")
    assert models.get_model("tiny", device="cpu", dtype="float32") is a  # a is now the most recent
    c = models.get_model("tiny-sd", device="cpu", dtype="float32")  # evicts b, the least recent
    assert len(models._LOADED) == 2 and len(loads) == 3
    assert models.get_model("tiny", device="cpu", dtype="float32") is a and len(loads) == 3
    assert models.get_model("tiny-sd", device="cpu", dtype="float32") is c and len(loads) == 3
    again = models.get_model("tiny", device="cpu", dtype="bfloat16")
    assert again is not b and len(loads) == 4 and len(models._LOADED) == 2


def test_real_model_cache_holds_one_copy():
    from watermark.models import MAX_LOADED, get_model

    assert MAX_LOADED >= 1
    assert get_model("tiny") is get_model("tiny", device="cpu", dtype="float32")


# --- progress on stderr ------------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_a_terminal_renders_and_closes(monkeypatch):
    from watermark.cli import Progress

    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(4, "verifying", quiet=False)
    for _ in range(4):
        progress.update(1)
    progress.close()
    out = err.getvalue()
    assert "verifying" in out and "\r" in out  # a bar redrawn in place
    assert "25%" in out and "100%" in out
    assert out.endswith("\n")  # closed: the cursor is back on a line of its own
    assert "images," not in out  # not the line mode


@pytest.mark.parametrize("every, expected", [
    (0.0, ["verifying: 1/3 images", "verifying: 2/3 images", "verifying: 3/3 images"]),
    (3600.0, ["verifying: 3/3 images"]),  # nothing until the end when updates come faster than every
])
def test_progress_without_a_terminal_prints_lines(monkeypatch, every, expected):
    from watermark.cli import Progress

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(3, "verifying", quiet=False, every=every)
    for _ in range(3):
        progress.update(1)
    progress.close()
    out = err.getvalue().splitlines()
    assert [line.split(",")[0] for line in out] == expected and "\r" not in err.getvalue()


@pytest.mark.parametrize("total, quiet", [(5, True), (1, False)])
def test_progress_silent_when_quiet_or_single(monkeypatch, total, quiet):
    from watermark.cli import Progress

    err = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", err)
    progress = Progress(total, "verifying", quiet=quiet)
    for _ in range(total):
        progress.update(1)
    progress.close()
    assert err.getvalue() == ""


# --- keyrings mixing patterns and radii --------------------------------------------------------------

MIXED = [("rand", 6, 11), ("ring", 10, 12), ("ringid", 8, 13)]  # pattern, radius, seed


def test_keyring_mixing_masks_finds_each_images_own_key(tmp_path):
    """One keyring for one model holding keys of different patterns and radii: each image is
    found with its own key, every key of the ring tested."""
    ring = tmp_path / "keyring.json"
    ids = {}
    for pattern, radius, seed in MIXED:
        result = run("keygen", "-o", tmp_path / f"key-{pattern}.json", "--keyring", ring, "--pattern", pattern,
                     "--radius", radius, "--seed", seed, "-q")
        assert result.exit_code == 0, result.output
        ids[pattern] = lines(result)[0]["key_id"]
        doc = json.loads((tmp_path / f"key-{pattern}.json").read_text())
        assert (doc["pattern"], doc["radius"]) == (pattern, radius)
        assert run("embed", "--key", tmp_path / f"key-{pattern}.json", "-o", tmp_path / "images" / pattern, "-n", 2,
                   *FEW, "-q").exit_code == 0
    assert len(set(ids.values())) == len(MIXED)
    result = run("verify", tmp_path / "images", "--key", ring, "--json", *QUICK_VERIFY)
    rows = lines(result)
    assert result.exit_code == 0 and len(rows) == 2 * len(MIXED), result.output
    for r in rows:
        pattern = Path(r["path"]).parent.name
        assert r["watermarked"] and r["key_id"] == ids[pattern] and r["keys_tested"] == len(MIXED), r


# --- ringmark bench scale ------------------------------------------------------------------------------

def test_bench_scale_help_and_report_without_runs(tmp_path):
    """The cheap part of ``bench scale`` (its runs start Ray and fresh processes: the slow test
    below): the folder it scans is made, and the report is written with what ran."""
    help_text = run("bench", "scale", "--help").output
    assert "--quick" in help_text and "--skip-scan" in help_text and "--skip-serve" in help_text
    result = run("bench", "scale", "-n", 2, "--steps", 1, "--skip-scan", "--skip-serve", "-o", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "scale.json").read_text())
    assert res["n"] == 2 and "scan" not in res and "serve" not in res
    md = (tmp_path / "scale.md").read_text()
    assert result.stdout.strip() == md.strip()  # printed is what was written


@pytest.mark.slow  # scan and serve, each a fresh Ray: ~3 minutes on 2 cores
@pytest.mark.xdist_group("ray")
def test_bench_scale_smallest_run(tmp_path):
    pytest.importorskip("ray")
    result = run("bench", "scale", "-n", 2, "--steps", 1, "--clients", 1, "--requests", 2, "-o", tmp_path, "-q")
    assert result.exit_code == 0, result.output
    res = json.loads((tmp_path / "scale.json").read_text())
    for name in ("verify", "verify_1_thread", "scan_1", "scan_2"):
        assert res["scan"][name]["seconds"] > 0, name
    for name in ("batched", "unbatched"):
        assert res["serve"][name]["errors"] == 0 and res["serve"][name]["requests"] == 2, name
    md = (tmp_path / "scale.md").read_text()
    assert "Scan of 2 images" in md and "batched / unbatched throughput" in md
