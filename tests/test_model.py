"""The bundled tiny model loads offline by name and behaves deterministically."""

import json

import pytest
import torch

from watermark.models import NAMED, TINY_PATH, TINY_SD_PATH, ModelError, load_model, resolve_dtype


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def test_loads_offline_by_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("tiny")
    assert type(model.vae).__name__ == "AutoencoderKL" and type(model.unet).__name__ == "UNet2DModel"
    assert type(model.scheduler).__name__ == "DDIMScheduler" and not model.conditional


def test_shapes_and_sizes(tiny):
    assert tiny.default_size == 128 and tiny.latent_shape(128) == (4, 32, 32) and tiny.latent_shape(48) == (4, 12, 12)
    x = torch.zeros(2, 3, 64, 64)
    with torch.inference_mode():
        z = tiny.encode(x)
        assert z.shape == (2, 4, 16, 16) and tiny.decode(z).shape == (2, 3, 64, 64)
        x0, eps = tiny.predict(z, 500)
        assert x0.shape == eps.shape == z.shape
    with pytest.raises(ModelError, match="multiple of 16"):
        tiny.latent_shape(100)


def test_the_vae_runs_a_batch_in_chunks_on_cpu_with_the_same_result(tiny):
    from watermark.models.latent import CPU_CHUNK_PIXELS, chunks

    x = torch.rand(5, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    per_image = CPU_CHUNK_PIXELS // (128 * 128)
    assert [len(c) for c in chunks(x)] == [per_image] * (5 // per_image) + [5 % per_image] * (5 % per_image > 0)
    assert [len(c) for c in chunks(x[:, :, :32, :32], 4)] == [len(c) for c in chunks(x)]  # latents of 128 px
    assert len(chunks(torch.rand(5, 3, 1024, 1024))) == 5  # at least one image per chunk
    with torch.inference_mode():
        z = tiny.encode(x)
        # the same up to the order of a sum: channels-last convolutions block a batch differently
        assert torch.allclose(z, torch.cat([tiny.encode(x[i : i + 1]) for i in range(5)]), atol=1e-4)
        assert torch.allclose(tiny.decode(z), torch.cat([tiny.decode(z[i : i + 1]) for i in range(5)]), atol=1e-3)
        assert tiny.encode(x[:0]).shape == (0, 4, 32, 32)


def test_key_channel_comes_from_the_model_folder(tiny, tmp_path):
    channel = json.loads((TINY_PATH / "ringmark.json").read_text())["key_channel"]
    assert tiny.default_key_channel == channel != tiny.latent_channels - 1  # not the fallback (last channel)
    from watermark import api

    other = (channel + 1) % tiny.latent_channels
    # Tree-Ring's ring goes to the model's key channel; rand to all of them unless told
    assert api.keygen(None, pattern="ring", seed=1).channels == (channel,)
    assert api.keygen(None, seed=1).channels == tuple(range(tiny.latent_channels))
    assert api.keygen(None, seed=1, channels=(other,)).channels == (other,)


def test_scaling_factor_is_the_trained_one(tiny):
    record = json.loads((TINY_PATH / "training.json").read_text())
    assert tiny.vae.config.scaling_factor == pytest.approx(record["scaling_factor"])
    assert tiny.vae.config.scaling_factor != 1.0  # AutoencoderKL's default would mean "not computed"


def test_scheduler_is_zero_terminal_snr_v_prediction(tiny):
    c = tiny.scheduler.config
    assert (c.num_train_timesteps, c.beta_schedule, c.clip_sample) == (1000, "scaled_linear", False)
    assert (c.prediction_type, c.rescale_betas_zero_snr, c.timestep_spacing) == ("v_prediction", True, "trailing")
    assert float(tiny.scheduler.alphas_cumprod[-1]) == 0.0 and float(tiny.alphas_cumprod[-1]) == 0.0  # no floor


def test_generation_and_inversion_stay_finite_at_t_T(tiny):
    from watermark.pipeline import Recovery, noise_from_latents

    z_T = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    z_0 = tiny.sample(z_T, steps=2)
    assert tiny.schedule(2).timesteps[0] == 999 and torch.isfinite(z_0).all()
    for exact in (False, True):
        assert torch.isfinite(noise_from_latents(tiny, z_0, Recovery(ddim_steps=2, exact=exact))).all()


@pytest.mark.parametrize("steps", [0, -5, 1001, 2.0])
def test_ddim_schedule_rejects(tiny, steps):
    with pytest.raises(ValueError, match="steps must be"):
        tiny.schedule(steps)


def test_two_step_generation_is_deterministic(tiny):
    def run(seed):
        z_T = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(seed))
        return tiny.generate(z_T, steps=2)

    a, b, c = run(7), run(7), run(8)
    assert a.shape == (2, 3, 128, 128) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_weights_ship_with_a_model_card_and_fit_the_budget():
    """The networks within 25 MiB; with the null models (three looks x 1,024 float32 z_T, 8.1 MiB
    each since 2026-12-04) the folder within 50 MiB."""
    files = [p for p in TINY_PATH.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if "null" not in p.relative_to(TINY_PATH).parts)
    assert weights <= 25 * 2**20
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20
    assert (TINY_PATH / "README.md").exists()


def test_bad_model_and_dtype():
    with pytest.raises(ModelError, match="cannot load model"):
        load_model("/nonexistent/model/folder")
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("float64")


def test_generation_reads_what_the_unet_predicts(tiny):
    """On SD's schedule, a v-prediction checkpoint generates what diffusers' DDIMScheduler makes of
    the UNet's raw output, and reading the same output as eps gives something else."""
    import dataclasses

    from diffusers import DDIMScheduler

    from watermark.training.train import make_scheduler

    as_v = dataclasses.replace(tiny, scheduler=make_scheduler(zero_snr=False, prediction_type="v_prediction"))
    z_T = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(4))
    reference = DDIMScheduler.from_config(as_v.scheduler.config)
    reference.set_timesteps(3)
    z = z_T
    with torch.no_grad():
        for t in reference.timesteps:
            z = reference.step(tiny.unet(z, t).sample, t, z).prev_sample
    ours = as_v.sample(z_T, steps=3)
    assert torch.allclose(ours, z, atol=1e-4)
    as_eps = dataclasses.replace(tiny, scheduler=make_scheduler(zero_snr=False, prediction_type="epsilon"))
    assert not torch.allclose(ours, as_eps.sample(z_T, steps=3), atol=1e-2)  # v is not read as eps


def test_gradient_inversion_leaves_no_grad_on_the_model(tiny):
    """The loaded networks are frozen: Adam through the decoder builds a graph for z alone
    (issue 21: 80 of the VAE's 136 parameters used to collect .grad, ~1.5x per step)."""
    from inversion import invert_decoder

    params = [p for m in (tiny.vae, tiny.unet) for p in m.parameters()]
    assert not any(p.requires_grad for p in params)
    x = torch.zeros(1, 3, 32, 32)
    with torch.inference_mode():
        z, _ = invert_decoder("gradient", tiny.encode, tiny.decode, x, iters=2)
    assert z.shape == (1, 4, 8, 8) and all(p.grad is None for p in params)


def test_tiny_sd_loads_offline_by_name(monkeypatch):
    """The SD-faithful bundled model: the same loader and classes as tiny, Stable Diffusion's VAE
    recipe (no cycle term: its training record says so), Tree-Ring's key channel (the last)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = load_model("tiny-sd")
    assert type(model.vae).__name__ == "AutoencoderKL" and type(model.unet).__name__ == "UNet2DModel"
    assert model.latent_shape(model.default_size) == (4, 32, 32) and model.hold == "v"
    assert model.default_key_channel == 3
    record = json.loads((TINY_SD_PATH / "training.json").read_text())
    assert record["vae_cycle"] == 0 and "refit_steps" not in record
    weights = sum(f.stat().st_size for f in TINY_SD_PATH.glob("*/*.safetensors"))
    assert weights <= 25e6


@pytest.mark.parametrize("name", sorted(NAMED))
def test_recovery_default_is_the_models_declared_one(name):
    """Recovery() takes the recovery each bundled model declares in its ringmark.json; an explicit
    setting wins; a method the model does not declare gets ringmark's iterations."""
    from watermark.pipeline import DEFAULT_ITERS, Recovery

    declared = json.loads((NAMED[name] / "ringmark.json").read_text())["recovery"]
    model = load_model(name)
    resolved = Recovery().for_model(model.default_recovery)
    assert resolved.method == declared["method"] and resolved.ddim_steps == declared["ddim_steps"]
    assert Recovery(ddim_steps=3).for_model(model.default_recovery).ddim_steps == 3
    other = next(m for m in ("fixed_point", "adam") if m != declared["method"])
    assert Recovery(other).for_model(model.default_recovery).iters == DEFAULT_ITERS


def test_sd_checkpoints_take_the_recovery_measured_on_tiny_sd(sd_folder):
    """A Stable Diffusion folder without a ringmark.json gets the SD-faithful model's recovery."""
    declared = json.loads((TINY_SD_PATH / "ringmark.json").read_text())["recovery"]
    assert not (sd_folder / "ringmark.json").exists()
    assert load_model(str(sd_folder)).default_recovery == {k: declared[k] for k in ("method", "iters", "ddim_steps")
                                                          if k in declared}


def test_recovery_refuses_bad_settings():
    from watermark.pipeline import Recovery

    for kwargs, message in ((dict(method="newton"), "must be one of"), (dict(iters=-1), "non-negative"),
                            (dict(ddim_steps=0), "positive"), (dict(method="encoder", iters=50), "no iterations")):
        with pytest.raises(ValueError, match=message):
            Recovery(**kwargs)
    with pytest.raises(ValueError, match="runs no iterations"):  # iterations for a model whose default is the encoder
        Recovery(iters=5).for_model({"method": "encoder"})


def test_for_model_fills_only_what_is_unset():
    """Recovery.for_model with declared settings unlike ringmark's own (the bundled models happen
    to declare ringmark's): every unset setting comes from the model, an explicit one wins, and a
    method the model does not declare gets ringmark's iterations, not the model's."""
    from watermark.pipeline import DEFAULT_ITERS, DEFAULT_STEPS, Recovery

    declared = {"method": "fixed_point", "iters": 20, "ddim_steps": 5}
    off = dict(photometric=False)  # resolved: not declared, so off
    assert Recovery().for_model(declared) == Recovery("fixed_point", 20, 5, **off)
    assert Recovery(iters=3).for_model(declared) == Recovery("fixed_point", 3, 5, **off)
    assert Recovery("adam").for_model(declared) == Recovery("adam", DEFAULT_ITERS, 5, **off)
    assert Recovery(ddim_steps=50, exact=True).for_model(declared) == Recovery("fixed_point", 20, 50, True, **off)
    assert Recovery().for_model({}) == Recovery("encoder", 0, DEFAULT_STEPS, **off)  # the encoder runs no iterations
    resolved = Recovery().for_model(declared)
    assert resolved.for_model({"method": "adam", "ddim_steps": 9}) == resolved  # resolving twice changes nothing
    # the second look and the photometric correction come with the model's method, as its iterations do
    adaptive = {"method": "encoder", "refine": "attack_aware:10", "photometric": True}
    assert Recovery().for_model(adaptive) == Recovery("encoder", 0, DEFAULT_STEPS, refine="attack_aware:10",
                                                      photometric=True)
    assert Recovery("encoder").for_model(adaptive) == Recovery("encoder", 0, DEFAULT_STEPS, **off)
    assert Recovery(refine="none", photometric=False).for_model(adaptive) == Recovery("encoder", 0, DEFAULT_STEPS, **off)


def test_the_model_cache_is_bounded(monkeypatch, tmp_path):
    """get_model keeps the MAX_LOADED models most recently asked for, not every model ever loaded."""
    from watermark import models

    monkeypatch.setattr(models, "_LOADED", type(models._LOADED)())
    monkeypatch.setattr(models, "load_model", lambda name, device, dtype: object())
    first = models.get_model("hub/a")
    assert models.get_model("hub/a") is first  # cached
    for i in range(models.MAX_LOADED + 2):
        models.get_model(f"hub/m{i}")
    assert len(models._LOADED) == models.MAX_LOADED and models.get_model("hub/a") is not first
