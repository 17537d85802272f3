"""The bundled rectified-flow model, tiny-flow: loaded offline by name through the same registry,
sampled with the Euler step of FlowMatchEulerDiscreteScheduler, inverted exactly, watermarked and
verified through the public API."""

import torch

from inversion import ddim_invert
from watermark import api
from watermark.models import get_model
from watermark.pipeline import Recovery


def test_tiny_flow_is_a_flow_model_loaded_by_name(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = get_model("tiny-flow")
    assert type(model).__name__ == "FlowUNetModel" and type(model.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert model.latent_shape(model.default_size) == (4, 32, 32) and not model.conditional
    schedule = model.schedule(20)
    assert schedule.a[0] == 0.0 and schedule.b[0] == 1.0 and schedule.b_next[-1] == 0.0  # pure noise to data


def test_euler_round_trip_is_exact():
    """20 Euler steps from z_T and 20 back: the exact inversion recovers z_T to -30 dB or better."""
    model = get_model("tiny-flow")
    z_T = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    z_0 = model.sample(z_T, 20)
    schedule = model.schedule(20)
    exact = ddim_invert(model.predict, z_0, schedule, exact=True, refine_iters=10, hold=model.hold)
    nmse = float(10 * torch.log10((exact - z_T).pow(2).sum() / z_T.pow(2).sum()))
    assert nmse <= -30, nmse


def test_embed_and_verify_on_tiny_flow(tmp_path):
    key = api.keygen(tmp_path / "k.json", model="tiny-flow", seed=11)
    api.embed(key, tmp_path / "wm", n=4, steps=20)
    api.embed(key, tmp_path / "clean", n=4, steps=20, watermark=False, seed=100)
    rows = api.verify([str(tmp_path / "wm"), str(tmp_path / "clean")], [key], Recovery())
    assert [r.watermarked for r in rows] == [True] * 4 + [False] * 4, [r.p_value for r in rows]
