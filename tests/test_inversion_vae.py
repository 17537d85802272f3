"""Every decoder-inversion method on a seeded tiny diffusers AutoencoderKL, in float32 and bfloat16."""

import pytest
import torch
from diffusers import AutoencoderKL

from inversion import METHODS, invert_decoder


@pytest.fixture(scope="module")
def vae():
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
    ).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_and_keeps_shape_and_dtype(vae, method, dtype):
    model = vae.to(dtype)
    encode = lambda x: model.encode(x).latent_dist.mean  # noqa: E731
    decode = lambda z: model.decode(z).sample  # noqa: E731
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)).mul(2).sub(1).to(dtype)
    kwargs = {} if method == "encoder" else {"iters": 3}
    z, record = invert_decoder(method, encode, decode, x, **kwargs)
    assert z.shape == (2, 4, 8, 8) and z.dtype == dtype
    assert torch.isfinite(z.float()).all()
    assert record.method == method
    assert record.pixel_error.shape == (0 if method == "encoder" else 3, 2)
