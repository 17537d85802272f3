"""Tiny random diffusers checkpoints of each family ringmark loads, built here (no download): the
folder layout, model_index.json and classes of the real ones, with a few thousand parameters."""

import json
from pathlib import Path

import torch

from watermark.training.tokenizer import save_tokenizer


def clip(path: Path, vocab: int, projection: bool = False, hidden: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(hidden_size=hidden, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                            vocab_size=vocab, max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=hidden)
    (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).save_pretrained(path)
    return ["transformers", "CLIPTextModelWithProjection" if projection else "CLIPTextModel"]


def t5(path: Path, vocab: int, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    T5EncoderModel(T5Config(vocab_size=vocab, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                            relative_attention_num_buckets=8, pad_token_id=1, eos_token_id=1)).save_pretrained(path)
    return ["transformers", "T5EncoderModel"]


def vae(path: Path, channels: int, **kwargs):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=channels, norm_num_groups=8,
                  sample_size=32, **kwargs).save_pretrained(path)
    return ["diffusers", "AutoencoderKL"]


def index(root: Path, pipeline: str, parts: dict) -> Path:
    (root / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **parts}))
    return root


TOKENIZER = ["transformers", "CLIPTokenizer"]


def sdxl(root: Path) -> Path:
    """StableDiffusionXLPipeline's layout: two text encoders (the second with projection, whose
    pooled output and the time ids go to the UNet's added conditioning)."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                           timestep_spacing="leading", steps_offset=1).save_pretrained(root / "scheduler")
    n = save_tokenizer(root / "tokenizer")
    save_tokenizer(root / "tokenizer_2")
    return index(root, "StableDiffusionXLPipeline", {
        "vae": vae(root / "vae", 4, force_upcast=True), "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": clip(root / "text_encoder", n),
        "text_encoder_2": clip(root / "text_encoder_2", n, projection=True), "tokenizer": TOKENIZER,
        "tokenizer_2": TOKENIZER, "image_encoder": [None, None], "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True})


def sd3(root: Path) -> Path:
    """StableDiffusion3Pipeline's layout: an MMDiT, two CLIPs with projection and a T5, a
    16-channel VAE with a shift factor, FlowMatchEulerDiscreteScheduler with shift 3."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    torch.manual_seed(0)
    SD3Transformer2DModel(sample_size=16, patch_size=1, in_channels=16, num_layers=1, attention_head_dim=8,
                          num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                          pooled_projection_dim=64, out_channels=16).save_pretrained(root / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=3.0).save_pretrained(root / "scheduler")
    n = save_tokenizer(root / "tokenizer")
    for name in ("tokenizer_2", "tokenizer_3"):
        save_tokenizer(root / name)
    return index(root, "StableDiffusion3Pipeline", {
        "vae": vae(root / "vae", 16, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                   use_post_quant_conv=False),
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": clip(root / "text_encoder", n, projection=True),
        "text_encoder_2": clip(root / "text_encoder_2", n, projection=True),
        "text_encoder_3": t5(root / "text_encoder_3", n), "tokenizer": TOKENIZER, "tokenizer_2": TOKENIZER,
        "tokenizer_3": TOKENIZER, "image_encoder": [None, None], "feature_extractor": [None, None]})


def flux(root: Path, guidance: bool = True) -> Path:
    """FluxPipeline's layout: a Flux transformer on 2x2-packed latents (dev: with the guidance
    embedding; schnell: without), a CLIP and a T5, a 16-channel VAE, dynamic shifting."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    torch.manual_seed(0)
    FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                           axes_dims_rope=[4, 4, 8], guidance_embeds=guidance).save_pretrained(root / "transformer")
    FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                    base_image_seq_len=256, max_image_seq_len=4096).save_pretrained(root / "scheduler")
    n = save_tokenizer(root / "tokenizer")
    save_tokenizer(root / "tokenizer_2")
    return index(root, "FluxPipeline", {
        "vae": vae(root / "vae", 16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                   use_post_quant_conv=False),
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"], "text_encoder": clip(root / "text_encoder", n),
        "text_encoder_2": t5(root / "text_encoder_2", n), "tokenizer": TOKENIZER, "tokenizer_2": TOKENIZER,
        "image_encoder": [None, None], "feature_extractor": [None, None]})


def umt5(path: Path, vocab: int, d_model: int = 32):
    from transformers import UMT5Config, UMT5EncoderModel

    UMT5EncoderModel(UMT5Config(vocab_size=vocab, d_model=d_model, d_ff=37, d_kv=8, num_layers=2, num_heads=4,
                                relative_attention_num_buckets=8, pad_token_id=1, eos_token_id=1)).save_pretrained(path)
    return ["transformers", "UMT5EncoderModel"]


def wan(root: Path) -> Path:
    """WanPipeline's layout (Wan 2.1 text-to-video): a causal 3D VAE (8x space, 4x time) with
    per-channel latent statistics, a Wan transformer on 1x2x2 patches, a UMT5, and the UniPC
    scheduler with a flow shift that the real checkpoints ship."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
                     latents_mean=[0.1, -0.2, 0.05, 0.0], latents_std=[1.5, 2.0, 0.8, 1.2]).save_pretrained(root / "vae")
    WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                          out_channels=4, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                          qk_norm="rms_norm_across_heads", rope_max_seq_len=32).save_pretrained(root / "transformer")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                            num_train_timesteps=1000).save_pretrained(root / "scheduler")
    n = save_tokenizer(root / "tokenizer")
    return index(root, "WanPipeline", {
        "vae": ["diffusers", "AutoencoderKLWan"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": umt5(root / "text_encoder", n),
        "tokenizer": TOKENIZER})


def text_to_video(root: Path) -> Path:
    """TextToVideoSDPipeline's layout (ModelScope T2V, zeroscope): SD's 2D VAE applied per frame, a
    UNet3DConditionModel, a CLIP text encoder and ModelScope's DDIM scheduler (eps-prediction)."""
    from diffusers import DDIMScheduler, UNet3DConditionModel

    torch.manual_seed(0)
    UNet3DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
                         norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                         down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D")).save_pretrained(root / "unet")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False).save_pretrained(root / "scheduler")
    n = save_tokenizer(root / "tokenizer")
    return index(root, "TextToVideoSDPipeline", {
        "vae": vae(root / "vae", 4), "unet": ["diffusers", "UNet3DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": clip(root / "text_encoder", n), "tokenizer": TOKENIZER})
