"""Every kind of bad input gives a one-line error naming the file; the batch goes on."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from watermark.cli import main

FAST = ["--ddim-steps", "2"]  # the model's decoder inversion (the encoder), 2 DDIM steps


def rgb(side=64):
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (side, side, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    path = tmp_path_factory.mktemp("key") / "k.json"
    assert CliRunner().invoke(main, ["keygen", "-o", str(path), "-q"]).exit_code == 0
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    rgb().save(d / "good.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    rgb(128).save(d / "full.png")
    (d / "truncated.png").write_bytes((d / "full.png").read_bytes()[:300])
    rgb(128).save(d / "full.jpg", quality=90)
    (d / "truncated.jpg").write_bytes((d / "full.jpg").read_bytes()[:600])
    os.remove(d / "full.png"), os.remove(d / "full.jpg")
    Image.new("RGB", (1, 1)).save(d / "tiny.png")
    rgb().convert("L").save(d / "grey.png")
    rgb().convert("RGBA").save(d / "rgba.png")
    rgb().convert("P").save(d / "palette.png")
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(d / "sixteen.png")
    rgb().convert("CMYK").save(d / "cmyk.jpg")
    frames = [rgb(), rgb().transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    rgb(300).save(d / "bomb.png")
    os.symlink(d / "loop.png", d / "loop.png")  # unreadable: a symlink loop (root can read any mode)
    return d


EXPECT_ERROR = {
    "empty.png": "empty file",
    "text.png": "not an image",
    "truncated.png": "cannot decode image",
    "truncated.jpg": "cannot decode image",
    "tiny.png": "image is 1x1",
    "bomb.png": "decompression bomb",
    "loop.png": "cannot read file",
}
EXPECT_NOTE = {
    "grey.png": "converted from L",
    "rgba.png": "converted from RGBA",
    "palette.png": "converted from P",
    "sixteen.png": "converted from I",
    "cmyk.jpg": "converted from CMYK",
    "anim.gif": "first frame of 2",
}


def test_each_bad_input(inputs, key, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20000)  # 300x300 = 90000 > 2x the limit
    missing = inputs / "missing.png"
    result = CliRunner().invoke(main, ["verify", str(inputs), str(missing), "--key", str(key), "--json", *FAST])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    rows = {os.path.basename(r["path"]): r for r in map(json.loads, result.stdout.splitlines())}
    assert rows["missing.png"]["error"] == "no such file or folder"
    for name, match in EXPECT_ERROR.items():
        assert rows[name]["error"] is not None and match in rows[name]["error"], (name, rows[name]["error"])
        assert "\n" not in rows[name]["error"]
    for name, match in {**EXPECT_NOTE, "good.png": "resized from 64x64"}.items():
        assert rows[name]["error"] is None and rows[name]["p_value"] is not None, (name, rows[name]["error"])
        assert match in rows[name]["note"], (name, rows[name]["note"])


def test_sixteen_bit_is_scaled_not_clipped(inputs):
    from watermark.io.images import load_image

    x = load_image(str(inputs / "sixteen.png"), 64).image
    assert abs(float(x.mean()) - (40000 / 65535 * 2 - 1)) < 0.01


def test_folder_without_images(tmp_path, key):
    result = CliRunner().invoke(main, ["verify", str(tmp_path), "--key", str(key), "--json"])
    assert result.exit_code == 2 and result.stdout == ""  # fails before the model loads: nothing to verify
    assert result.stderr == f"ringmark: error: {tmp_path}: folder holds no images\n"
