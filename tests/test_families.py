"""SDXL, SD3 and FLUX (dev and schnell) through the one model protocol, on tiny random checkpoints
built here (``tests/families.py``; no download): keygen -> embed through the family's real
diffusers pipeline with ``latents=`` -> exact inversion of the pipeline's latents recovers z_T ->
the key is detected on the latent path; the image path runs end to end through ``verify``."""

import json

import pytest
import torch

import families
from inversion import ddim_invert
from watermark import api
from watermark.models import FAMILIES, ModelError, load_model
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
    z_0 = pipe(prompt=["", ""], latents=model.pipeline_latents(z_T) if name != "sdxl" else z_T,
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
    assert seen["prompt"] == ["a red house"] * 2 and [g.key_id for g in made] == [key.key_id] * 2
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
