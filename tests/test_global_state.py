"""No hidden global state: nothing secret-derived outlives its key, and reading an image or
joining Ray leaves the process's settings as they were."""

import gc
import os
import weakref

import numpy as np
from PIL import Image, ImageFile

from watermark.io.images import load_image
from watermark.scale.cluster import cluster_address
from watermark.scheme.detection import direction, key_window, match_keys
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key


def test_nothing_derived_from_a_key_outlives_it():
    key = new_key("tiny", (4, 32, 32), seed=1)
    first = direction(key)
    assert direction(key) is first and key_window(key) is key_window(key)  # computed once per key
    match_keys(watermarked_latents(key, seeds=[0]), [key])
    ref = weakref.ref(key)
    del key
    gc.collect()
    assert ref() is None  # a process-wide cache (lru_cache) would hold it, and its secret values


def test_reading_an_image_leaves_pillow_settings_alone(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a host application's choice
    load_image(str(path), 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


def test_an_empty_ray_address_is_ignored_not_deleted(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "  ")
    assert cluster_address() is None and os.environ["RAY_ADDRESS"] == "  "
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert cluster_address() == "ray://head:10001" and cluster_address("auto") == "auto"
