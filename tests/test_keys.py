"""Key files: round trip, permissions, no silent overwrite, refusal of bad or tampered files."""

import json
import os
import stat

import pytest

from watermark.io.keyfile import load_key, save_key
from watermark.scheme.keys import Key, KeyFileError, default_radius, new_key


@pytest.fixture
def key():
    return new_key("tiny", (4, 32, 32), seed=1234)


def test_defaults_scale_with_latent():
    assert default_radius(64, "ring") == 10  # Tree-Ring on SD's 64x64 latents
    assert default_radius(32, "ring") == 5 and default_radius(32, "rand") == 7 and default_radius(64, "rand") == 14
    k = new_key("tiny", (4, 32, 32))
    assert k.pattern == "rand" and k.radius == 7 and k.channels == (0, 1, 2, 3) and k.seed.bit_length() > 64


def test_version_2_files_still_load_with_their_key_id(tmp_path):
    """A key file written before keys had several channels: same key, same id, same pattern."""
    old = Key("ring", 5, (3,), 99, "tiny", (4, 32, 32), version=2)
    doc = {"format": "ringmark-key", "version": 2, "pattern": "ring", "radius": 5, "channel": 3, "seed": 99,
           "model": "tiny", "latent_shape": [4, 32, 32], "key_id": old.key_id}
    key = load_key(_write(tmp_path, doc))
    assert key == old and key.channels == (3,) and key.key_id == old.key_id
    assert key.key_id != Key("ring", 5, (3,), 99, "tiny", (4, 32, 32)).key_id  # the version is part of the id
    assert bool(key.mask()[3].any()) and not key.mask()[:3].any()


def test_round_trip_and_owner_only(tmp_path, key):
    path = tmp_path / "k.json"
    save_key(key, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key(path) == key


def test_no_overwrite_without_force(tmp_path, key):
    path = tmp_path / "k.json"
    path.write_text("precious")
    with pytest.raises(KeyFileError, match="exists; use --force"):
        save_key(key, path)
    assert path.read_text() == "precious"
    save_key(key, path, force=True)
    assert load_key(path) == key and stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_seed_never_shown(key):
    assert "1234" not in repr(key) and "1234" not in str(key)
    assert key.key_id in repr(key)


def _write(tmp_path, doc):
    path = tmp_path / "bad.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.update(version=1), "version 1 is not supported"),
    (lambda d: d.update(format="other"), "not a ringmark key file"),
    (lambda d: d.update(radius="5"), "field 'radius' must be int"),
    (lambda d: d.update(extra=1), "unexpected \\['extra'\\]"),
    (lambda d: d.pop("seed"), "missing \\['seed'\\]"),
    (lambda d: d.update(seed=d["seed"] + 1), "key_id does not match"),
    (lambda d: d.update(channels=[7]), "channels must be distinct, ascending and in"),
    (lambda d: d.update(channels=[1, 1]), "channels must be distinct"),
    (lambda d: d.update(channels=["0"]), "must be integers"),
    (lambda d: d.update(latent_shape=[4, 32]), "three positive integers"),
    (lambda d: d.update(pattern="spiral"), "pattern must be one of"),
])
def test_refuses_bad_files(tmp_path, key, mutate, match):
    save_key(key, tmp_path / "good.json")
    doc = json.loads((tmp_path / "good.json").read_text())
    mutate(doc)
    with pytest.raises(KeyFileError, match=match):
        load_key(_write(tmp_path, doc))


def test_refuses_non_json_and_missing(tmp_path):
    with pytest.raises(KeyFileError, match="not JSON"):
        load_key(_write(tmp_path, "hello"))
    with pytest.raises(KeyFileError, match="no such key file"):
        load_key(tmp_path / "nope.json")


def test_new_key_validation():
    with pytest.raises(KeyFileError, match="radius must be in"):
        new_key("tiny", (4, 32, 32), radius=16)
    with pytest.raises(KeyFileError, match="channels must be"):
        new_key("tiny", (4, 32, 32), channels=(4,))
    with pytest.raises(KeyFileError, match="pattern must be one of"):
        new_key("tiny", (4, 32, 32), pattern="spiral")
    assert isinstance(new_key("tiny", (4, 16, 16), pattern="zeros"), Key)
