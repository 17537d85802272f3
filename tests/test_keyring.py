"""Many keys: keyring files, folders of keys with a bad file among them, the collision check at
keygen, and identification of the right key among 64 on the bundled model."""

import json
import os
import stat

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from watermark import api
from watermark.cli import main
from watermark.io.keyfile import save_key
from watermark.io.keyring import add_to_keyring, load_keyring, load_keys, save_keyring
from watermark.models import get_model
from watermark.pipeline import Decision, Recovery, detect
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import KeyFileError, new_key

SHAPE = (4, 32, 32)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_keyring_round_trip_is_owner_only_and_never_overwritten(tmp_path):
    keys = [new_key("tiny", SHAPE, seed=s) for s in range(5)]
    path = tmp_path / "ring.json"
    save_keyring(keys, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_keyring(path) == (keys, [])
    with pytest.raises(KeyFileError, match="exists; use --force"):
        save_keyring(keys[:2], path)
    assert add_to_keyring(new_key("tiny", SHAPE, seed=99), path) == 6
    with pytest.raises(KeyFileError, match="already in the keyring"):
        add_to_keyring(keys[0], path)
    assert len(load_keyring(path)[0]) == 6 and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_a_bad_key_among_good_ones_is_named_and_skipped(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    good = [new_key("tiny", SHAPE, seed=s) for s in range(3)]
    for i, k in enumerate(good[:2]):
        save_key(k, folder / f"k{i}.json")
    (folder / "broken.json").write_text('{"format": "ringmark-key", "vers')  # truncated
    save_keyring([good[2], good[0]], folder / "ring.json")  # a keyring in the folder; a duplicate key
    doc = json.loads((folder / "ring.json").read_text())
    doc["keys"].append({**doc["keys"][0], "seed": 5})  # tampered entry: its key_id no longer matches
    (folder / "ring.json").write_text(json.dumps(doc))
    keys, problems = load_keys([folder])
    assert sorted(k.key_id for k in keys) == sorted(k.key_id for k in good)
    assert len(problems) == 2
    assert any("broken.json: not a key file (not JSON)" in p for p in problems)
    assert any("ring.json: key 2: key_id does not match" in p for p in problems)
    assert all("\n" not in p for p in problems)
    with pytest.raises(KeyFileError, match="broken.json: not a key file"):
        load_keys([folder / "broken.json"])  # named directly, a bad key file is an error
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyFileError, match="no .json key or keyring files"):
        load_keys([empty])


def test_keygen_into_a_keyring_refuses_collisions(tmp_path):
    ring = tmp_path / "ring.json"
    for i in range(2):
        result = run("keygen", "-o", tmp_path / f"k{i}.json", "--keyring", ring, "-q")
        assert result.exit_code == 0, result.output
    assert len(load_keyring(ring)[0]) == 2
    again = run("keygen", "-o", tmp_path / "k2.json", "--keyring", ring, "--seed", 1, "-q")
    assert again.exit_code == 0
    same = run("keygen", "-o", tmp_path / "k3.json", "--keyring", ring, "--seed", 1, "-q")
    assert same.exit_code == 2 and "already in the keyring" in same.stderr and not (tmp_path / "k3.json").exists()
    # RingID with radius 2 on one channel has a single +-1 ring: every key is +-1 times any other
    small = tmp_path / "small.json"
    args = ["--pattern", "ringid", "--radius", 2, "--channels", 0, "--keyring", small, "-q"]
    assert run("keygen", "-o", tmp_path / "r0.json", *args).exit_code == 0
    full = run("keygen", "-o", tmp_path / "r1.json", *args)
    assert full.exit_code == 2 and "keyring is full for pattern 'ringid'" in full.stderr
    assert "|cos| 1.00" in full.stderr and len(load_keyring(small)[0]) == 1 and not (tmp_path / "r1.json").exists()


def test_verify_with_a_folder_of_keys_warns_about_the_bad_one(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir()
    keys = [new_key("tiny", SHAPE, seed=s) for s in (3, 4)]
    for i, k in enumerate(keys):
        save_key(k, folder / f"k{i}.json")
    (folder / "zz.json").write_text("not json")
    assert run("embed", "--key", folder / "k1.json", "-o", tmp_path / "wm", "-n", 1, "--steps", 10, "-q").exit_code == 0
    result = run("verify", tmp_path / "wm", "--key", folder, "--ddim-steps", 10, "--json")
    assert result.exit_code == 0, result.output
    assert f"ringmark: warning: {folder / 'zz.json'}: not a key file (not JSON) (skipped; 2 keys in use)" in result.stderr
    row = json.loads(result.stdout.splitlines()[0])
    assert row["watermarked"] and row["key_id"] == keys[1].key_id and row["keys_tested"] == 2


def test_the_right_key_wins_among_64_and_clean_images_stay_clean():
    model = get_model("tiny")
    keyring = [new_key("tiny", SHAPE, seed=1000 + i) for i in range(64)]
    carried = [5, 17, 40]
    z = torch.cat([watermarked_latents(keyring[i], seeds=[i]) for i in carried]
                  + [watermarked_latents(keyring[0], seeds=[s], watermark=False) for s in (7, 8, 9)])
    images = model.generate(z, 10) * 2 - 1
    found = detect(model, images, keyring, Recovery(ddim_steps=10), Decision(alpha=0.01))
    assert [d.key_id for d in found[:3]] == [keyring[i].key_id for i in carried]
    assert all(d.watermarked and d.p_value < 1e-6 for d in found[:3])
    assert not any(d.watermarked for d in found[3:])
    assert all(d.keys_tested == 64 and d.transforms_tested == 414 for d in found)
    assert np.all([d.p_value >= d.raw_p_value for d in found])


def test_concurrent_additions_are_not_lost(tmp_path):
    """Four processes add ten keys each to one keyring at once: all forty are there (the read,
    check and write of add_to_keyring run under a lock; without it 24 of 40 survived)."""
    import json
    import subprocess
    import sys

    code = ("import sys\nfrom watermark.io.keyring import add_to_keyring\nfrom watermark.scheme.keys import new_key\n"
            "for i in range(10):\n    add_to_keyring(new_key('tiny', (4, 32, 32), seed=int(sys.argv[2]) + i), sys.argv[1])\n")
    ring = tmp_path / "ring.json"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(ring), str(100 * j)]) for j in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    keys = json.loads(ring.read_text())["keys"]
    assert len(keys) == 40 and len({k["key_id"] for k in keys}) == 40
    assert not [f for f in tmp_path.iterdir() if f.name != "ring.json"]  # no lock file or temporary left


def test_a_fresh_key_per_image_from_a_keyring(tmp_path, monkeypatch):
    """keygen -n fills a ring; embed with the ring gives each image a key drawn from it, recorded in
    the manifest, and verify against the ring finds that key (tiny-sd, whose marks are strong at 10
    steps; the draw is seeded here so the test repeats: embed itself draws with ``secrets``)."""
    import secrets

    rng = np.random.default_rng(0)
    monkeypatch.setattr(secrets, "randbelow", lambda n: int(rng.integers(n)))
    ring = tmp_path / "ring.json"
    made = run("keygen", "--keyring", ring, "-n", 32, "--model", "tiny-sd", "-q")
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout) == {"keyring": str(ring), "added": 32}
    assert stat.S_IMODE(ring.stat().st_mode) == 0o600
    keys = load_keyring(ring)[0]
    assert len(keys) == 32 and len({k.key_id for k in keys}) == 32
    assert run("keygen", "--keyring", ring, "-n", 1, "-o", tmp_path / "k.json").exit_code == 2  # -n writes no key file
    out = tmp_path / "out"
    assert run("embed", "--key", ring, "-o", out, "-n", 6, "--steps", 10, "-q").exit_code == 0
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    used = [r["key_id"] for r in manifest]
    assert set(used) <= {k.key_id for k in keys}
    assert len(set(used)) > 1
    for r, found in zip(manifest, api.verify([str(out)], [ring], Recovery(ddim_steps=10))):
        assert found.watermarked and found.key_id == r["key_id"] and found.keys_tested == 32
