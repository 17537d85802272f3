"""Video, the second family: TextToVideoSDPipeline (ModelScope T2V, zeroscope; the bundled
tiny-video's layout) on a tiny random checkpoint built here: 2D VAE per frame, UNet3D, DDIM."""

import json

import pytest
import torch
from click.testing import CliRunner

import families
from inversion import ddim_invert
from watermark.cli import main
from watermark.models import ModelError, load_model, makes_video
from watermark.scheme.clip import match_clip
from watermark.scheme.embedding import watermarked_latents
from watermark.scheme.keys import new_key

SIZE, FRAMES, STEPS = 32, 6, 8  # 6 frames of 16 x 16 latents (the VAE downsamples 2x)


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = families.text_to_video(tmp_path_factory.mktemp("t2v"))
    return folder, load_model(str(folder))


def nmse_db(a, b):
    return float(10 * torch.log10((a - b).pow(2).sum() / b.pow(2).sum()))


def test_loads_as_a_video_model_with_a_latent_frame_per_frame(t2v):
    folder, model = t2v
    assert type(model).__name__ == "TextToVideoModel" and model.video and makes_video(str(folder))
    assert model.latent_shape(SIZE) == (4, 16, 16) and model.clip_shape(SIZE, FRAMES) == (4, FRAMES, 16, 16)
    assert model.default_guidance == 9.0 and model.default_frames == 16  # the pipeline's defaults
    with pytest.raises(ModelError, match="1 frame or more"):
        model.latent_frames(0)
    x = torch.rand(2, 3, FRAMES, SIZE, SIZE) * 2 - 1
    z = model.encode(x)
    assert z.shape == (2, 4, FRAMES, 16, 16)
    # frame by frame: the clip's third frame encodes as that frame alone
    assert torch.allclose(z[:, :, 2], model.encode(x[:, :, 2:3])[:, :, 0], atol=1e-5)
    assert model.decode(z).shape == x.shape


def test_the_pipelines_latents_invert_exactly_to_the_key_in_every_frame(t2v):
    """TextToVideoSDPipeline from z_T (empty prompt, guidance 1) lands where ringmark's DDIM sampler
    lands; exact inversion gives z_T back, and the clip test finds the key in every frame."""
    folder, model = t2v
    key = new_key(model.name, model.latent_shape(SIZE), seed=3)
    z_T = watermarked_latents(key, seeds=[0, 1], frames=FRAMES)
    z_0 = model._pipeline()(prompt=["", ""], latents=z_T, num_frames=FRAMES, num_inference_steps=STEPS, height=SIZE,
                            width=SIZE, output_type="latent", guidance_scale=1.0).frames
    assert torch.allclose(model.sample(z_T, STEPS), z_0, atol=1e-4)
    schedule = model.schedule(STEPS, (16, 16))
    exact = ddim_invert(model.predict, z_0, schedule, exact=True, refine_iters=5, hold=model.hold)
    naive = ddim_invert(model.predict, z_0, schedule, hold=model.hold)
    assert nmse_db(exact, z_T) <= -30 and nmse_db(exact, z_T) < nmse_db(naive, z_T)
    for m in match_clip(exact, [key]):
        assert m.p_value < 1e-10 and len(m.frame_p_values) == FRAMES and max(m.frame_p_values) < 1e-6
    clean = watermarked_latents(key, seeds=[0, 1], frames=FRAMES, watermark=False)
    assert all(m.p_value > 1e-3 for m in match_clip(clean, [key]))


def test_embed_and_verify_clips_on_the_command_line(t2v, tmp_path):
    """keygen -> embed 2 MP4 clips -> verify: one row per clip, a p per frame; the clip with its
    frames dropped is verified too (the clip test takes what is left)."""
    from watermark.bench.video_attacks import attack_clip
    from watermark.io.videos import load_video

    folder, model = t2v
    run = CliRunner()
    key = tmp_path / "k.json"
    assert run.invoke(main, ["keygen", "--model", str(folder), "--size", str(SIZE), "-o", str(key)]).exit_code == 0
    result = run.invoke(main, ["embed", "--key", str(key), "-o", str(tmp_path / "out"), "-n", "2", "--frames",
                               str(FRAMES), "--steps", "2", "--guidance", "1"])
    assert result.exit_code == 0, result.output
    clip = load_video(tmp_path / "out" / "00000.mp4", SIZE).image  # (3, F, H, W) in [-1, 1]
    assert attack_clip((clip.transpose(0, 1) + 1) / 2, "frame drop", tmp_path / "dropped.mp4") == FRAMES // 2
    result = run.invoke(main, ["verify", str(tmp_path / "out"), str(tmp_path / "dropped.mp4"), "--key", str(key), "--json"])
    rows = {r["path"]: r for r in map(json.loads, result.stdout.splitlines())}
    assert len(rows) == 3 and all(r["error"] is None for r in rows.values()), result.output
    assert len(rows[str(tmp_path / "out" / "00000.mp4")]["frame_p_values"]) == FRAMES
    assert len(rows[str(tmp_path / "dropped.mp4")]["frame_p_values"]) == FRAMES // 2


def test_a_missing_package_is_one_line_naming_the_video_extra(t2v, monkeypatch):
    import diffusers

    def missing(*args, **kwargs):
        raise ImportError("TextToVideoSDPipeline requires the transformers library\nbut it was not found")

    monkeypatch.setattr(diffusers.TextToVideoSDPipeline, "from_pretrained", missing)
    folder, _ = t2v
    with pytest.raises(ModelError) as e:
        load_model(str(folder))
    assert "\n" not in str(e.value) and "ringmark[video]" in str(e.value) and "transformers library" in str(e.value)
