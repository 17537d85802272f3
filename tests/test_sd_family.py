"""The Stable-Diffusion-family path, on a tiny random StableDiffusion checkpoint built here (no download)."""

import json

import pytest
import torch
from click.testing import CliRunner

from watermark.cli import main


def bytes_to_unicode():
    """GPT-2/CLIP's byte -> printable character table (byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b), cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A diffusers folder with SD's layout: vae, unet (cross-attention), scheduler, text_encoder, tokenizer."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8, attention_head_dim=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                  sample_size=32).save_pretrained(root / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(root / "scheduler")
    # a byte-level tokenizer with no merges: every byte is a token
    chars = list(bytes_to_unicode().values())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt"),
                  model_max_length=16, pad_token="<|endoftext|>").save_pretrained(root / "tokenizer")
    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                 vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                                 pad_token_id=1)).save_pretrained(root / "text_encoder")
    return root


def test_loads_by_path_with_the_same_loader(sd_folder):
    from watermark.model import load_model

    model = load_model(str(sd_folder))
    assert model.conditional and model.downsample == 2 and model.size_multiple == 4
    assert model.prompt_embeds(["a cat"]).shape == (1, 16, 32)


def test_embed_passes_watermarked_noise_as_latents(sd_folder, tmp_path, monkeypatch):
    """embed hands z_T to StableDiffusionPipeline(latents=...) with the prompt."""
    from diffusers import StableDiffusionPipeline

    from watermark.embed import initial_noise
    from watermark.keys import load_key

    runner = CliRunner()
    assert runner.invoke(main, ["keygen", "-o", str(tmp_path / "k.json"), "--model", str(sd_folder), "--size", "32",
                                "-q"]).exit_code == 0
    seen = {}
    original = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    result = runner.invoke(main, ["embed", "--key", str(tmp_path / "k.json"), "-o", str(tmp_path / "out"), "-n", "2",
                                  "--prompt", "a red house", "--steps", "4", "-q"])
    assert result.exit_code == 0, result.output
    key = load_key(tmp_path / "k.json")
    assert key.channel == 3  # no ringmark.json in the folder: the last channel, as Tree-Ring on SD
    assert torch.equal(seen["latents"], initial_noise(key, [0, 1]))
    assert seen["prompt"] == ["a red house"] * 2 and seen["guidance_scale"] == 7.5
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert [m["prompt"] for m in manifest] == ["a red house"] * 2

    result = runner.invoke(main, ["verify", str(tmp_path / "out"), "--key", str(tmp_path / "k.json"), "--json",
                                  "--iters", "2", "--ddim-steps", "4"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 2 and all(r["error"] is None and 0 <= r["p_value"] <= 1 for r in rows)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_pipeline_latents_invert_to_the_key(sd_folder, prediction_type):
    """Pipeline-generated latents (empty prompt, guidance 1) DDIM-invert (exact) back to the watermark,
    for eps- and v-prediction checkpoints (SD 1.x, SD 2.x at 768 px): the pipeline steps with the
    UNet's raw output, our inversion with model.eps."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from inversion import ddim_invert, ddim_schedule
    from watermark.detect import score
    from watermark.embed import initial_noise
    from watermark.keys import new_key
    from watermark.model import load_model

    model = load_model(str(sd_folder))
    model.scheduler = DDIMScheduler.from_config(model.scheduler.config, prediction_type=prediction_type)
    assert model.noise_mean(999) == 0.0  # no ringmark.json: plain N(0, I) noise, as the pipeline samples
    key = new_key(str(sd_folder), model.latent_shape(32), seed=5)
    z_T = initial_noise(key, [0, 1])
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=model.scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    z_0 = pipe(prompt=["", ""], latents=z_T, num_inference_steps=10, guidance_scale=1.0, output_type="latent",
               height=32, width=32).images
    # a random UNet is far from smooth: naive inversion is 7% off here, exact inversion 1e-5
    recovered = ddim_invert(model.eps, z_0, ddim_schedule(model.scheduler, 10), exact=True, refine_iters=5,
                            extra_args={"cond": model.prompt_embeds([""])})
    assert all(s.p_value < 1e-10 for s in score(recovered, key))


def test_prompt_refused_by_unconditional_model(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", "-o", str(tmp_path / "k.json"), "-q"]).exit_code == 0
    result = runner.invoke(main, ["embed", "--key", str(tmp_path / "k.json"), "-o", str(tmp_path / "o"),
                                  "--prompt", "cat"])
    assert result.exit_code == 2 and "unconditional" in result.stderr
