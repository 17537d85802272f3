import json
import os
import re

import numpy as np
import pytest
import torch

import families

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n: one torch thread per worker, not one per core each
    torch.set_num_threads(1)


RAY_FILES = {"test_serve.py", "test_browser.py", "test_scan.py"}


def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n auto --dist loadgroup`` every test that starts Ray runs on one worker, in
    turn: two local Rays on 2 cores starve each other's Serve proxies. (Collected first, so that
    they ran beside the other worker's heavy tests, 4 of the first 6 failed and the run slowed to a
    fifth of its pace: they stay where collection puts them, mostly at the end.)"""
    for item in items:
        code = str(item.callspec.params.get("code", "")) if hasattr(item, "callspec") else ""
        if (item.path.name in RAY_FILES or "ray_local" in item.fixturenames
                or re.search(r"ringmark (serve|scan)", code)):
            item.add_marker(pytest.mark.xdist_group("ray"))


class LinearPair:
    """D(z) = A z and an approximate inverse E = (I + P) A^+, so that E∘D = I + P.

    P is small with a positive-definite symmetric part, so T(z) = E(D(z)) - E(x) is
    cocoercive, and E(x) = (I + P) z* differs from z*.
    """

    def __init__(self, seed=20241127, latent=(4, 4, 4), pixels=(3, 8, 8), batch=3):
        rng = np.random.default_rng(seed)
        n, m = int(np.prod(latent)), int(np.prod(pixels))
        self.latent, self.pixels = latent, pixels
        A = rng.standard_normal((m, n)) / np.sqrt(n)
        Q = rng.standard_normal((n, n)) / np.sqrt(n)
        S = 0.1 * Q @ Q.T + 0.05 * np.eye(n)  # symmetric positive definite part
        K = 0.1 * (Q - Q.T) / 2  # skew part
        self.M = np.eye(n) + S + K  # E∘D
        self.A = torch.tensor(A, dtype=torch.float32)
        self.E = torch.tensor(self.M @ np.linalg.pinv(A), dtype=torch.float32)
        Minv = np.linalg.inv(self.M)
        self.beta = float(np.linalg.eigvalsh((Minv + Minv.T) / 2).min())  # cocoercivity constant of T
        self.z_star = torch.tensor(rng.standard_normal((batch, *latent)), dtype=torch.float32)
        self.x = self.decode(self.z_star)

    def decode(self, z):
        return (z.flatten(1).to(self.A.dtype) @ self.A.T).reshape(len(z), *self.pixels).to(z.dtype)

    def encode(self, x):
        return (x.flatten(1).to(self.E.dtype) @ self.E.T).reshape(len(x), *self.latent).to(x.dtype)

    def rel_error(self, z):
        return float((z.float() - self.z_star).norm() / self.z_star.norm())


@pytest.fixture
def linear():
    return LinearPair()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A diffusers folder with SD's layout: vae, unet (cross-attention), scheduler, text_encoder, tokenizer."""
    from diffusers import DDIMScheduler, UNet2DConditionModel

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).save_pretrained(root / "unet")
    families.vae(root / "vae", 4)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    n = families.save_tokenizer(root / "tokenizer")
    families.clip(root / "text_encoder", n)
    (root / "model_index.json").write_text(json.dumps({  # what StableDiffusionPipeline.from_pretrained reads
        "_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "safety_checker": [None, None], "feature_extractor": [None, None], "requires_safety_checker": False}))
    return root


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    """A diffusers folder with Wan 2.1's layout (``families.wan``): the video pages' stand-in."""
    return families.wan(tmp_path_factory.mktemp("wan"))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray on 2 CPUs for the serve and scan tests (as on CI's machines)."""
    from watermark.scale.cluster import connect

    ray = connect(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def scale_world(tmp_path_factory):
    """A key, 3 watermarked + 3 clean images of the bundled model, 3 unreadable files, and what
    `verify --json` says of each (path -> row): the reference the Ray entry points must match."""
    from click.testing import CliRunner

    from watermark.cli import main

    root = tmp_path_factory.mktemp("scale")
    run = lambda *args: CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)  # noqa: E731
    assert run("keygen", "-o", root / "key.json", "--seed", 5, "-q").exit_code == 0
    images = root / "images"
    assert run("embed", "--key", root / "key.json", "-o", images / "wm", "-n", 3, "--steps", 10, "-q").exit_code == 0
    assert run("embed", "--key", root / "key.json", "-o", images / "clean", "-n", 3, "--steps", 10, "--no-watermark",
               "-q").exit_code == 0
    (images / "bad").mkdir()
    (images / "bad" / "junk.png").write_text("not an image\n")
    (images / "bad" / "empty.png").write_bytes(b"")
    (images / "bad" / "truncated.png").write_bytes((images / "wm" / "00000.png").read_bytes()[:400])
    result = run("verify", images, "--key", root / "key.json", "--json", "-q")
    assert result.exit_code == 2  # the unreadable files
    reference = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert len(reference) == 9 and sum(bool(r["watermarked"]) for r in reference.values()) == 3
    return root, images, reference


def same_result(row: dict, reference: dict) -> bool:
    """Equal to `verify --json`'s row but for the timing; p-value and distance to float32 batch
    noise (a convolution's result depends on the batch it ran in, ~1e-5 relative here)."""
    import math

    skip = {"path", "file", "batch_seconds_per_image", "p_value", "distance"}
    if {k: v for k, v in row.items() if k not in skip} != {k: v for k, v in reference.items() if k not in skip}:
        return False
    for name, tol in (("p_value", 1e-3), ("distance", 1e-4)):
        a, b = row[name], reference[name]
        if (a is None) != (b is None) or (a is not None and not math.isclose(a, b, rel_tol=tol)):
            return False
    return True
