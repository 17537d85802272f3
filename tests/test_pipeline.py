"""The tensor-level pipeline and the model protocol: a second model family, written here from
scratch in a few lines, runs embed -> verify through the public functions alone."""

from dataclasses import dataclass

import pytest
import torch

from inversion import ddim_sample, ddim_schedule
from watermark import Recovery, detect, make_key, watermarked_latents
from watermark.models import DiffusionModel
from watermark.pipeline import Decision


@dataclass
class ToyFamily:
    """Latents are 2x2 average pools of the image, decoding is nearest upsampling (so E(D(z)) = z);
    the 'UNet' predicts eps = b_t z_t (so x_0 = a_t z_t), which makes DDIM a linear map of z_T."""

    name: str = "toy"
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    default_size: int = 32
    downsample: int = 2
    default_key_channel: int = 0
    conditional: bool = False
    hold: str = "eps"
    default_recovery = {"method": "fixed_point", "iters": 3, "ddim_steps": 4}  # what Recovery() runs on it

    def latent_shape(self, size):
        return (3, size // 2, size // 2)

    def encode(self, x):
        return torch.nn.functional.avg_pool2d(x, 2) * 4

    def decode(self, z):
        return torch.nn.functional.interpolate(z / 4, scale_factor=2)

    def condition(self, prompts=None):
        return None

    def predict(self, z, t, cond=None):
        a, b = float(self.alphas[t]) ** 0.5, float(1 - self.alphas[t]) ** 0.5
        return a * z, b * z

    @property
    def alphas(self):
        return torch.linspace(0.999, 0.01, 1000, dtype=torch.float64)

    def schedule(self, steps, hw=None):
        return ddim_schedule(self.alphas, list(range(999, -1, -1000 // steps))[:steps], 1.0)

    def generate(self, z_T, steps=50, prompts=None, guidance=None):
        z_0 = ddim_sample(self.predict, z_T, self.schedule(steps))
        return ((self.decode(z_0).clamp(-1, 1) + 1) / 2).float()


def test_a_new_family_is_one_class_and_the_pipeline_runs_on_it():
    toy = ToyFamily()
    assert isinstance(toy, DiffusionModel)
    key = make_key(toy, seed=11)
    assert key.channels == (0, 1, 2) and key.latent_shape == (3, 16, 16)
    wm = toy.generate(watermarked_latents(key, seeds=range(6)), steps=10) * 2 - 1
    clean = toy.generate(watermarked_latents(key, seeds=range(6), watermark=False), steps=10) * 2 - 1
    recovery = Recovery("fixed_point", iters=3, ddim_steps=10)
    found = detect(toy, torch.cat([wm, clean]), [key], recovery, Decision(alpha=0.01))
    assert [d.watermarked for d in found] == [True] * 6 + [False] * 6, [d.p_value for d in found]
    assert all(d.key_id == key.key_id and d.keys_tested == 1 for d in found)
    by_default = detect(toy, wm[:2], [key])  # Recovery(): the family's declared recovery
    assert [d.iterations for d in by_default] == [3, 3] and all(d.watermarked for d in by_default)


def test_detect_checks_the_image_size_and_alpha():
    toy = ToyFamily()
    key = make_key(toy, seed=1)
    with pytest.raises(ValueError, match=r"images must be \(B, 3, 32, 32\)"):
        detect(toy, torch.zeros(1, 3, 64, 64), [key])
    with pytest.raises(ValueError, match="alpha"):
        Decision(alpha=1.0)
    with pytest.raises(ValueError, match="search"):
        Decision(search="everything")


def test_weak_evidence_is_within_a_factor_ten_of_alpha_either_side():
    decide = Decision(alpha=0.01).decide
    assert decide(1e-9) == (True, False)
    assert decide(0.005) == (True, True)
    assert decide(0.05) == (False, True)
    assert decide(0.5) == (False, False)


def test_watermarked_latents_by_seeds_generator_device_and_dtype():
    key = make_key(ToyFamily(), pattern="ring", seed=3)  # Tree-Ring's ring: the model's key channel only
    assert key.channels == (0,)
    a = watermarked_latents(key, seeds=[4, 5])
    assert torch.equal(a[1:], watermarked_latents(key, seeds=[5]))  # an image's noise does not depend on its batch
    g = watermarked_latents(key, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float16)
    assert g.shape == (3, 3, 16, 16) and g.dtype == torch.float16
    assert torch.equal(g, watermarked_latents(key, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float16))
    clean = watermarked_latents(key, seeds=[4, 5], watermark=False)
    assert torch.equal(a[:, 1:], clean[:, 1:]) and not torch.allclose(a[:, 0], clean[:, 0])  # only the key channel
    with pytest.raises(ValueError, match="global RNG"):
        watermarked_latents(key, 2)
    with pytest.raises(ValueError, match="batch_size"):
        watermarked_latents(key, generator=torch.Generator())
    with pytest.raises(ValueError, match="not both"):
        watermarked_latents(key, seeds=[1], generator=torch.Generator())


def test_the_layout_holds_inversion_knows_no_diffusers_and_the_runtime_no_benchmarks():
    import subprocess
    import sys

    code = ("import sys, inversion; assert 'diffusers' not in sys.modules, 'inversion imported diffusers'; "
            "import watermark.api, watermark.pipeline, watermark.cli; "
            "bad = [m for m in sys.modules if m.startswith(('watermark.bench', 'watermark.training'))]; "
            "assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_row_describes_the_look_that_decided(tmp_path):
    """tiny's default takes up to three looks; each row names the look that decided it, that
    look's iterations and its own null model (each look is tested with the null of its recovery)."""
    from watermark import api

    key = api.keygen(tmp_path / "k.json", seed=3)
    api.embed(key, tmp_path / "im", n=2, steps=10)
    from PIL import Image, ImageEnhance

    bright = ImageEnhance.Brightness(Image.open(tmp_path / "im" / "00000.png")).enhance(3.0)  # clips: the edited look
    bright.save(tmp_path / "im" / "bright.png")
    rows = {r.path.rsplit("/", 1)[-1]: r for r in api.verify([str(tmp_path / "im")], [key])}
    plain, edited = rows["00001.png"], rows["bright.png"]
    assert plain.inversion == "encoder (photometric)" and plain.iterations == 0
    assert plain.null_model == "null-encoder-ddim10-photometric-4x32x32.npz"
    assert edited.inversion == "attack_aware 10 it. from the encoder, edited image (photometric)"
    assert edited.iterations == 10 and edited.null_model == "null-encoder+attack_aware10-edited-ddim10-photometric-4x32x32.npz"
    assert plain.watermarked and edited.watermarked and plain.note is None


def test_looks_taken_once_give_the_same_verdicts():
    """``detect(taken=)``: looks taken beforehand (a benchmark testing many keys takes them once)
    give each image the p-value of looks taken inside; a look of another recovery is refused."""
    from watermark import get_model, make_key, watermarked_latents
    from watermark.pipeline import take_looks

    model = get_model("tiny")
    key = make_key(model, seed=11)
    z = torch.cat([watermarked_latents(key, seeds=[s], watermark=s % 2 == 0) for s in range(4)])
    x = (model.generate(z, steps=5) * 255).round() / 255 * 2 - 1
    recovery = Recovery(ddim_steps=5).for_model(model.default_recovery)
    taken = take_looks(model, x, recovery, batch=3)  # two batches, joined
    assert set(taken) == {"first", "second"} and len(taken["second"].z_T) == 4
    decision = Decision(alpha=0.3, search="none")  # a wide weak band: the last clean image gets a second look
    inside = detect(model, x, [key], recovery, decision)
    given = detect(model, x, [key], recovery, decision, taken=taken)
    assert [d.p_value for d in inside] == pytest.approx([d.p_value for d in given], rel=1e-5)
    assert [d.look for d in inside] == [d.look for d in given]
    assert any("second look" in d.look for d in given)
    with pytest.raises(ValueError, match="first look given"):
        detect(model, x, [key], Recovery("fixed_point", 2, 5), Decision(search="none"), taken=taken)
