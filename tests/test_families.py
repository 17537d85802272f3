"""SDXL, SD3 and FLUX (dev and schnell) through the one model protocol, on tiny random checkpoints
built here (``tests/families.py``; no download): keygen -> embed through the family's real
diffusers pipeline with ``latents=`` -> exact inversion of the pipeline's latents recovers z_T ->
the key is detected on the latent path; the image path runs end to end through ``verify``."""

import dataclasses
import json
import shutil

import pytest
import torch

import families
from inversion import ddim_invert
from watermark import api
from watermark.models import FAMILIES, ModelError, get_model, load_model
from watermark.models.flux import pack, unpack
from watermark.pipeline import Recovery, detect
from watermark.scheme.detection import match_keys
from watermark.scheme.embedding import watermarked_latents

BUILD = {"sdxl": families.sdxl, "sd3": families.sd3, "flux-dev": families.flux,
         "flux-schnell": lambda root: families.flux(root, guidance=False)}
CLASSES = {"sdxl": "StableDiffusionXLModel", "sd3": "StableDiffusion3Model", "flux-dev": "FluxModel",
           "flux-schnell": "FluxModel"}
SIZE, STEPS = 32, 8


@pytest.fixture(scope="module", params=list(BUILD))
def family(request, tmp_path_factory):
    folder = BUILD[request.param](tmp_path_factory.mktemp(request.param))
    return request.param, folder, load_model(str(folder))


def nmse_db(a, b):
    return float(10 * torch.log10((a - b).pow(2).sum() / b.pow(2).sum()))


def test_the_family_comes_from_model_index(family):
    name, folder, model = family
    assert type(model).__name__ == CLASSES[name]
    channels = 4 if name == "sdxl" else 16  # keys live on the VAE's latent channels: 16 for SD3 and FLUX
    assert model.latent_shape(SIZE) == (channels, SIZE // 2, SIZE // 2)


def test_pipeline_latents_invert_exactly_to_the_key(family):
    """The family's pipeline generates from z_T (``latents=``, empty prompt, no classifier-free
    guidance; FLUX at its default guidance input); exact inversion of its latents recovers z_T."""
    name, folder, model = family
    key = api.keygen(None, model=str(folder), size=SIZE, seed=5)
    z_T = watermarked_latents(key, seeds=[0, 1])
    pipe = model._pipeline() if name == "sdxl" else model.pipe
    options = {} if name.startswith("flux") else {"guidance_scale": 1.0}
    if name == "sdxl":  # its empty prompt is the pipeline's zero embedding (test_sdxl_empty_prompt_...)
        cond = model.condition()
        options.update(prompt_embeds=cond["embeds"].expand(2, -1, -1), pooled_prompt_embeds=cond["pooled"].expand(2, -1))
    else:
        options.update(prompt=["", ""])
    z_0 = pipe(latents=model.pipeline_latents(z_T) if name != "sdxl" else z_T,
               num_inference_steps=STEPS, height=SIZE, width=SIZE, output_type="latent", **options).images
    if name.startswith("flux"):
        z_0 = unpack(z_0, SIZE // 2, SIZE // 2)  # FluxPipeline returns its packed tokens
    assert torch.allclose(model.sample(z_T, STEPS), z_0, atol=1e-4)  # our sampler steps as the pipeline does
    schedule = model.schedule(STEPS, (SIZE // 2, SIZE // 2))
    exact = ddim_invert(model.predict, z_0, schedule, exact=True, refine_iters=5, hold=model.hold)
    naive = ddim_invert(model.predict, z_0, schedule, hold=model.hold)
    assert nmse_db(exact, z_T) <= -30 and nmse_db(exact, z_T) < nmse_db(naive, z_T), (nmse_db(exact, z_T),
                                                                                        nmse_db(naive, z_T))
    assert all(m.p_value < 1e-10 and m.key_id == key.key_id for m in match_keys(exact, [key]))
    assert all(m.p_value > 1e-3 for m in match_keys(watermarked_latents(key, seeds=[0, 1], watermark=False), [key]))


def test_embed_and_verify_run_end_to_end(family, tmp_path, monkeypatch):
    """embed hands the pipeline z_T as its latents= (packed for FLUX) with the prompt; verify reads
    the PNGs back and gives each the p-value ``pipeline.detect`` gives the same pixels."""
    name, folder, model = family
    key = api.keygen(tmp_path / "k.json", model=str(folder), size=SIZE, seed=7)
    seen = {}
    cls = type(model._pipeline() if name == "sdxl" else model.pipe)
    original = cls.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "__call__", spy)
    made = api.embed(key, tmp_path / "out", n=2, prompts=["a red house"], steps=4)
    expected = watermarked_latents(key, seeds=[0, 1])
    assert torch.equal(seen["latents"], pack(expected) if name.startswith("flux") else expected)
    if name == "sdxl":  # SDXL's pipeline gets the prompts' embeddings (its empty prompt: zeros)
        assert torch.equal(seen["prompt_embeds"], model.condition(["a red house"] * 2)["embeds"])
    else:
        assert seen["prompt"] == ["a red house"] * 2
    assert [g.key_id for g in made] == [key.key_id] * 2
    rows = api.verify([str(tmp_path / "out")], [key], Recovery(ddim_steps=4), null="none")
    from watermark.io.images import load_image

    images = torch.stack([load_image(str(tmp_path / "out" / g.file), SIZE).image for g in made])
    direct = detect(model, images, [key], Recovery(ddim_steps=4))
    assert [r.error for r in rows] == [None, None]
    assert [r.p_value for r in rows] == pytest.approx([d.p_value for d in direct], rel=1e-4)


def test_an_unknown_layout_is_a_one_line_error(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ModelError, match="names KandinskyV22Pipeline; ringmark loads StableDiffusionPipeline, "
                                         "StableDiffusionXLPipeline"):
        load_model(str(tmp_path))


def test_a_new_family_is_one_registry_line(tmp_path, monkeypatch):
    """The registry dispatches on model_index.json's class name to the family's load()."""
    from test_pipeline import ToyFamily

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "ToyPipeline"}))
    monkeypatch.setitem(FAMILIES, "ToyPipeline", lambda source, name, device, dtype: ToyFamily(name=name))
    model = load_model(str(tmp_path))
    assert isinstance(model, ToyFamily) and model.name == str(tmp_path)


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    return families.sdxl(tmp_path_factory.mktemp("sdxl"))  # force_zeros_for_empty_prompt: true, as SDXL 1.0's


def test_sdxl_empty_prompt_is_the_pipelines_zero_embedding(sdxl_folder):
    """Under force_zeros_for_empty_prompt StableDiffusionXLPipeline's unconditional embedding is zeros,
    not the encoding of "": so is ringmark's empty prompt, in inversion (``condition()``) and in
    generation. Ringmark's sampler gives what the pipeline gives from the same latents= on it (at
    guidance 7.5: both branches are that embedding), and generating with no prompt is that sample."""
    model = load_model(str(sdxl_folder))
    pipe = model._pipeline()
    assert model.force_zeros and pipe.config.force_zeros_for_empty_prompt
    _, negative, _, negative_pooled = pipe.encode_prompt([""], device=model.device, do_classifier_free_guidance=True)
    cond = model.condition()
    assert not negative.any() and torch.equal(cond["embeds"], negative) and torch.equal(cond["pooled"], negative_pooled)
    z_T = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(11))
    ours = model.sample(z_T, STEPS)
    theirs = pipe(prompt_embeds=negative.expand(2, -1, -1), pooled_prompt_embeds=negative_pooled.expand(2, -1),
                  latents=z_T, num_inference_steps=STEPS, guidance_scale=7.5, height=SIZE, width=SIZE,
                  output_type="latent").images
    # channels-last weights sum in blocks by batch (models.load_model): the pipeline's batch of 4 and our
    # batch of 2 agree to float32 rounding, 1e-6 here; 1e-4 as the test above
    assert torch.allclose(ours, theirs, atol=1e-4), float((ours - theirs).abs().max())
    images = model.generate(z_T, STEPS)  # no prompt, guidance 7.5 (embed's default)
    assert torch.allclose(images, (model.decode(ours).clamp(-1, 1) + 1) / 2, atol=1e-3)
    # without force_zeros the pipeline's negative is the encoding of "", and so is ringmark's empty prompt
    plain = dataclasses.replace(model, force_zeros=False, _empty_prompt=None)
    _, negative, _, _ = plain._pipeline().encode_prompt([""], device=model.device, do_classifier_free_guidance=True)
    assert negative.abs().sum() > 0 and torch.equal(plain.condition()["embeds"], negative)


def test_sdxl_pipelines_never_add_diffusers_invisible_watermark(sdxl_folder, monkeypatch):
    """StableDiffusionXLPipeline stamps invisible-watermark's mark on its images whenever that package
    is installed, unless built with add_watermarker=False; ringmark's loading and generation build it so."""
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl as sdxl_pipeline

    class Stamp:  # stands in for the package's watermarker, as if it were installed
        def __init__(self):
            raise AssertionError("diffusers' invisible watermarker was set up")

    monkeypatch.setattr(sdxl_pipeline, "is_invisible_watermark_available", lambda: True)
    monkeypatch.setattr(sdxl_pipeline, "StableDiffusionXLWatermarker", Stamp, raising=False)
    model = load_model(str(sdxl_folder))
    assert model._pipeline().watermark is None
    assert model.generate(torch.randn(1, 4, SIZE // 2, SIZE // 2), steps=2).shape == (1, 3, SIZE, SIZE)


def test_sdxl_eps_prediction_on_zero_terminal_snr_is_refused_at_load(sdxl_folder, tmp_path):
    folder = shutil.copytree(sdxl_folder, tmp_path / "zero-snr")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "rescale_betas_zero_snr": True,
                                  "prediction_type": "epsilon"}))
    with pytest.raises(ModelError, match=r"predicts eps on a zero-terminal-SNR schedule") as e:
        load_model(str(folder))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("variant, setting", [("dev", None), ("dev", 5.0), ("schnell", None)])
def test_flux_guidance_is_a_recorded_setting_that_inversion_shares(variant, setting, tmp_path, monkeypatch):
    """verify cannot read FLUX-dev's guidance input off an image, so it is the model's setting (the
    folder's ringmark.json "guidance", else 3.5): embed generates at it, writes it to the manifest,
    refuses another, and verify's inversion gives the transformer the same value (schnell: none)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel

    folder = families.flux(tmp_path / "flux", guidance=variant == "dev")
    if setting is not None:
        (folder / "ringmark.json").write_text(json.dumps({"guidance": setting}))
    expected = {"dev": setting or 3.5, "schnell": None}[variant]
    key = api.keygen(None, model=str(folder), size=SIZE, seed=3)
    assert get_model(str(folder)).guidance == expected
    calls, inputs = [], []
    call, forward = FluxPipeline.__call__, FluxTransformer2DModel.forward

    def spy_call(self, *args, **kwargs):
        calls.append(kwargs)
        return call(self, *args, **kwargs)

    def spy_forward(self, *args, **kwargs):
        inputs.append(kwargs.get("guidance"))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(FluxPipeline, "__call__", spy_call)
    monkeypatch.setattr(FluxTransformer2DModel, "forward", spy_forward)
    made = api.embed(key, tmp_path / "out", n=1, steps=2)
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert made[0].guidance == manifest[0]["guidance"] == calls[0].get("guidance_scale") == expected
    inputs.clear()
    rows = api.verify([str(tmp_path / "out")], [key], Recovery(ddim_steps=2), null="none")
    assert rows[0].error is None and inputs
    if expected is None:
        assert all(g is None for g in inputs)
    else:
        assert all(g is not None and torch.all(g == expected) for g in inputs)
    with pytest.raises(ModelError, match="no guidance input" if expected is None else f"generates at guidance {expected}"):
        api.embed(key, tmp_path / "other", n=1, steps=2, guidance=7.5)
