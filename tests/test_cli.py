"""The CLI end to end on the bundled model (few steps where the point allows)."""

import json
import os
import stat

import pytest
from click.testing import CliRunner

from watermark.cli import main

STEPS = ["--steps", "10"]
# verify runs with the recovery the model declares (watermark/models/tiny/ringmark.json: the encoder
# and 10 DDIM steps) unless a test says otherwise: what a user gets without options.


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    for seed, name in zip((23, 14, 2), "abc"):
        assert run("keygen", "-o", root / f"{name}.json", "--seed", seed, "-q").exit_code == 0
    assert run("embed", "--key", root / "a.json", "-o", root / "wm", "-n", 3, *STEPS, "-q").exit_code == 0
    assert run("embed", "--key", root / "a.json", "-o", root / "clean", "-n", 3, *STEPS, "--no-watermark",
               "-q").exit_code == 0
    return root


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and "ringmark, version 0.1.0" in result.output


def test_version_help_and_usage_errors_load_no_torch():
    """--version, --help and a mistyped command answer before torch loads (the libraries take
    seconds to import; the command line's choices live in the torch-free ``watermark.choices``)."""
    import subprocess
    import sys

    probe = ("import sys; from click.testing import CliRunner; from watermark.cli import main; "
             "r = [CliRunner().invoke(main, a) for a in (['--version'], ['verify', '--help'], ['verfy'])]; "
             "print([x.exit_code for x in r], 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split("]")[-1].strip() == "False" and "[0, 0, 2]" in done.stdout, done.stdout


def test_command_line_choices_match_the_libraries():
    from inversion import DTYPES, METHODS
    from watermark.choices import DTYPE_NAMES, METHOD_NAMES

    assert list(METHOD_NAMES) == list(METHODS) and list(DTYPE_NAMES) == list(DTYPES)


def test_keygen_is_owner_only_never_prints_the_seed_and_never_overwrites(tmp_path):
    path = tmp_path / "k.json"
    result = run("keygen", "-o", path, "--seed", 987654321)
    assert result.exit_code == 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert "987654321" not in result.output
    before = path.read_text()
    again = run("keygen", "-o", path)
    assert again.exit_code == 2 and "exists; use --force" in again.stderr and path.read_text() == before
    assert run("keygen", "-o", path, "--force").exit_code == 0 and path.read_text() != before


def test_embed_writes_manifest_and_refuses_overwrite(world):
    manifest = [json.loads(line) for line in (world / "wm" / "manifest.jsonl").read_text().splitlines()]
    assert [m["file"] for m in manifest] == ["00000.png", "00001.png", "00002.png"]
    assert [m["seed"] for m in manifest] == [0, 1, 2] and all(m["model"] == "tiny" for m in manifest)
    assert len({m["key_id"] for m in manifest}) == 1
    clean = [json.loads(line) for line in (world / "clean" / "manifest.jsonl").read_text().splitlines()]
    assert all(m["key_id"] is None and not m["watermarked"] for m in clean)
    result = run("embed", "--key", world / "a.json", "-o", world / "wm", "-n", 1, *STEPS)
    assert result.exit_code == 2 and "exists; use --force" in result.stderr


def test_embed_force_replaces_the_previous_run_and_nothing_else(tmp_path):
    """--force over a run of 3: the new run's 2 images and manifest, none of the old run's third
    image beside them; a file embed did not write stays."""
    assert run("keygen", "-o", tmp_path / "k.json", "--seed", 5, "-q").exit_code == 0
    assert run("embed", "--key", tmp_path / "k.json", "-o", tmp_path / "out", "-n", 3, "--steps", 2, "-q").exit_code == 0
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert run("embed", "--key", tmp_path / "k.json", "-o", tmp_path / "out", "-n", 2, "--steps", 2, "--seed", 9,
               "--force", "-q").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00000.png", "00001.png", "manifest.jsonl",
                                                                    "notes.txt"]
    assert [json.loads(line)["seed"] for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()] == [9, 10]


def test_watermarked_images_are_found(world):
    result = run("verify", world / "wm", "--key", world / "a.json", "--json")
    rows = lines(result)
    assert result.exit_code == 0, result.stderr
    assert len(rows) == 3 and all(r["watermarked"] and r["error"] is None and r["p_value"] <= r["alpha"] == 0.01
                                  for r in rows), rows
    assert {"path", "watermarked", "p_value", "key_id", "distance", "error", "inversion", "iterations"} <= set(rows[0])
    # the evidence orders the images: every watermarked image's p below every clean one's (same
    # seeds, same model; the clean ones' p is near uniform, the watermarked ones' far below alpha)
    clean = lines(run("verify", world / "clean", "--key", world / "a.json", "--json"))
    assert len(clean) == 3 and all(not r["watermarked"] and r["p_value"] > r["alpha"] for r in clean), clean
    assert max(r["p_value"] for r in rows) < min(r["p_value"] for r in clean), (rows, clean)


def test_right_key_among_three(world):
    key_id = json.loads((world / "a.json").read_text())["key_id"]
    result = run("verify", world / "wm", "--key", world / "b.json", "--key", world / "a.json", "--key",
                 world / "c.json", "--json")
    rows = lines(result)
    assert len(rows) == 3 and all(r["key_id"] == key_id and r["keys_tested"] == 3 and r["watermarked"] for r in rows)
    # the right key is the best key: the runner-up (one of the two wrong keys) has less evidence
    assert all(r["runner_up_p_value"] is not None and r["p_value"] < r["runner_up_p_value"] for r in rows), rows


CLEAN_N = 32


def false_positive_bound(n, alpha, luck=1e-3):
    """The smallest k with P(Binomial(n, alpha) >= k) <= luck: a well-calibrated test flags k or
    more of n clean images with probability at most ``luck``."""
    from scipy.stats import binom

    k = 0
    while binom.sf(k - 1, n, alpha) > luck:
        k += 1
    return k


def test_clean_images_are_not_flagged(world, tmp_path):
    """The false-positive rate at alpha, on CLEAN_N clean images (a statistical claim, cheaply:
    generated in 2 steps, tested without the geometric search). With the model's declared recovery
    the shipped null model makes p exact for this key, so on clean images each is flagged with
    probability alpha, independently: the count is Binomial(CLEAN_N, alpha), and it reaches the
    bound (4 of 32 at alpha = 0.01) by luck with probability 2.9e-4 (<= 1e-3)."""
    alpha = 0.01
    folder = tmp_path / "clean"
    assert run("embed", "--key", world / "a.json", "-o", folder, "-n", CLEAN_N, "--steps", 2, "--seed", 1000,
               "--no-watermark", "-q").exit_code == 0
    result = run("verify", folder, "--key", world / "a.json", "--json", "--search", "none", "--alpha", alpha)
    rows = lines(result)
    assert len(rows) == CLEAN_N and all(r["error"] is None and r["null_model"] for r in rows), rows[:1]
    flagged = sum(r["watermarked"] for r in rows)
    assert flagged == sum(r["p_value"] <= alpha for r in rows)
    bound = false_positive_bound(CLEAN_N, alpha)
    assert bound == 4  # what the docstring states
    assert flagged < bound, sorted(r["p_value"] for r in rows)
    assert result.exit_code == (0 if flagged else 1)


def test_table_output_and_exit_2_when_an_input_fails(world):
    result = run("verify", world / "wm" / "00000.png", world / "missing.png", "--key", world / "a.json")
    assert result.exit_code == 2
    assert "WATERMARKED" in result.stdout and "no such file or folder" in result.stdout
    assert "Traceback" not in result.output


@pytest.mark.parametrize("content, match", [
    ("not json", "not JSON"),
    ('{"format": "ringmark-key", "version": 9}', "version 9 is not supported"),
])
def test_bad_key_file_is_a_one_line_error(world, tmp_path, content, match):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    result = run("verify", world / "wm", "--key", bad)
    assert result.exit_code == 2 and match in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_key_that_does_not_fit_the_model(world, tmp_path):
    doc = json.loads((world / "a.json").read_text())
    from watermark.io.keyfile import save_key
    from watermark.scheme.keys import Key

    key = Key(doc["pattern"], doc["radius"], (2,), doc["seed"], "tiny", (3, 32, 32))  # a valid key, wrong model
    save_key(key, tmp_path / "k3.json")
    result = run("verify", world / "wm", "--key", tmp_path / "k3.json")
    assert result.exit_code == 2 and "does not fit model 'tiny'" in result.stderr


def test_usage_errors_exit_2(world):
    assert run("verify", world / "wm").exit_code == 2  # no key
    assert run("verify", world / "wm", "--key", world / "a.json", "--inversion", "newton").exit_code == 2
    assert run("verify", world / "wm", "--key", world / "a.json", "--alpha", "1.5").exit_code == 2


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if a model loads: what is checked here must be refused before that."""
    from watermark import models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(models, "load_model", refuse)
    models._LOADED.clear()
    yield
    models._LOADED.clear()


def test_bad_paths_and_outputs_fail_before_the_model_loads(world, tmp_path, no_model):
    for args, match in [
        (("keygen", "-o", tmp_path / "no" / "such" / "k.json"), "does not exist"),
        (("keygen", "-o", world / "a.json"), "exists; use --force"),
        (("verify", tmp_path / "missing.png", "--key", world / "a.json"), "no such file or folder"),
        (("verify", world / "wm", "--key", tmp_path / "missing.json"), "no such key file"),
        (("embed", "--key", world / "a.json", "-o", world / "wm", "-n", 1), "exists; use --force"),
    ]:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 and match in result.stderr, (args, result.stderr)
        assert ".ringmark-key-" not in result.stderr and "Traceback" not in result.output
    size = run("keygen", "-o", tmp_path / "k.json", "--size", 0)  # a usage error, in click's words
    assert size.exit_code == 2 and "Invalid value for '--size': 0 is not in the range x>=1" in size.stderr


def test_unconditional_model_refuses_guidance_and_writes_nothing(world, tmp_path):
    result = run("embed", "--key", world / "a.json", "-o", tmp_path / "out", "--guidance", 3, *STEPS)
    assert result.exit_code == 2 and "takes no prompt or guidance" in result.stderr
    assert not (tmp_path / "out").exists()


def test_table_shows_alpha_a_summary_and_weak_evidence(world):
    result = run("verify", world / "wm", world / "clean", "--key", world / "a.json", "--alpha", 0.05)
    rows = result.stdout.strip().splitlines()
    as_json = lines(run("verify", world / "wm", world / "clean", "--key", world / "a.json", "--alpha", 0.05,
                        "--json"))
    assert all(r["watermarked"] for r in as_json[:3])  # a clean image may come out positive at 0.05 (p = alpha)
    found = sum(r["watermarked"] for r in as_json)
    assert rows[-1].startswith(f"{found} of 6 watermarked at alpha = 0.05"), rows[-1]
    for r, row in zip(as_json, rows[1:]):
        assert r["alpha"] == 0.05 and r["weak"] == (0.005 < r["p_value"] <= 0.5)
        assert ("(weak)" in row) == r["weak"] and ("WATERMARKED" in row) == r["watermarked"]
        assert r["batch_seconds_per_image"] > 0


def test_squashed_image_warns_on_stderr(world, tmp_path):
    from PIL import Image

    Image.open(world / "wm" / "00000.png").resize((256, 128)).save(tmp_path / "wide.png")
    result = run("verify", tmp_path / "wide.png", "--key", world / "a.json")
    assert result.exit_code in (0, 1)
    assert "ringmark: warning:" in result.stderr and "squashed to 128x128 (aspect 2.00)" in result.stderr
    quiet = run("verify", tmp_path / "wide.png", "--key", world / "a.json", "-q")
    assert quiet.stderr == ""


def test_a_key_of_another_model_is_named_in_a_warning_not_a_silent_p_of_one(world, tmp_path):
    """embed names its model in each PNG (a text chunk, nothing of the key); verify warns when the
    keys are another model's, in the table's stderr and in the stored row."""
    from PIL import Image

    assert Image.open(world / "wm" / "00000.png").text == {"ringmark:model": "tiny"}
    assert run("keygen", "--model", "tiny-sd", "-o", tmp_path / "sd.json", "--seed", 3, "-q").exit_code == 0
    result = run("verify", world / "wm" / "00000.png", "--key", tmp_path / "sd.json")
    assert result.exit_code == 1
    assert "model 'tiny' made it, but the keys are for 'tiny-sd'" in result.stderr
    row = lines(run("verify", world / "wm" / "00000.png", "--key", tmp_path / "sd.json", "--json", "-q"))[0]
    assert "'tiny-sd'" in row["warning"] and "'tiny'" in row["warning"]
    assert run("verify", world / "wm" / "00000.png", "--key", world / "a.json", "--json", "-q").exit_code == 0


def test_progress_without_a_terminal_prints_lines(world):
    result = run("verify", world / "wm", world / "clean", "--key", world / "a.json", "--batch", 4)
    assert "verifying: 6/6 images" in result.stderr


def test_api_takes_a_single_path_and_refuses_mixed_keys_before_loading(world, tmp_path, no_model):
    from watermark import api
    from watermark.io.keyfile import load_key
    from watermark.scheme.keys import Key, KeyFileError

    a = load_key(world / "a.json")
    other = Key(a.pattern, a.radius, a.channels, a.seed, "tiny", (4, 64, 64))
    # a mixed key set is a KeyFileError since fbb8f95 (check_key_set), a ValueError before it
    with pytest.raises((KeyFileError, ValueError), match="same model and latent shape"):
        api.verify(str(world / "wm"), [a, other])
    with pytest.raises(ValueError, match="size must be a positive integer"):
        api.keygen(None, size=0)
    with pytest.raises(ValueError, match="batch must be positive"):
        api.verify(str(world / "wm"), [a], batch=0)
    with pytest.raises(ValueError, match="no seeds"):
        from watermark import watermarked_latents

        watermarked_latents(a, seeds=[])


def test_exact_progress_reaches_every_image(world):
    from watermark import api
    from watermark.pipeline import Recovery

    seen = []
    api.verify(str(world / "wm"), [world / "a.json"], recovery=Recovery(ddim_steps=4, exact=True), progress=seen.append)
    assert sum(seen) == 3 and all(k >= 1 for k in seen)
