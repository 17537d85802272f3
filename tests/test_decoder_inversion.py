"""Decoder inversion on a linear decoder with an inexact linear encoder (known answer z*)."""

import pytest
import torch

from inversion import adam, encoder, fixed_point, gradient, inertial_km, invert_decoder


def test_encoder_alone_is_inexact(linear):
    z, record = encoder(linear.encode, linear.decode, linear.x)
    assert linear.rel_error(z) > 0.05  # E(x) = (I + P) z*, not z*
    assert record.iterations.tolist() == [0, 0, 0]


@pytest.mark.parametrize("method", [fixed_point, inertial_km])
def test_fixed_point_methods_recover_z_star(linear, method):
    z, record = method(linear.encode, linear.decode, linear.x, iters=200)
    assert linear.rel_error(z) < 1e-5
    assert record.residual.shape == (200, 3) and record.pixel_error.shape == (200, 3)
    assert record.seconds > 0


def test_adam_reduces_error_100_fold(linear):
    e0 = linear.rel_error(linear.encode(linear.x))
    z, _ = adam(linear.encode, linear.decode, linear.x, iters=300)
    assert linear.rel_error(z) < e0 / 100


def test_gradient_reduces_error_100_fold(linear):
    e0 = linear.rel_error(linear.encode(linear.x))
    z, record = gradient(linear.encode, linear.decode, linear.x, iters=300)
    assert linear.rel_error(z) < e0 / 100
    assert record.pixel_error[-1].max() < record.pixel_error[0].min()  # converges on the decoder loss


@pytest.mark.parametrize("fraction", [0.5, 1.0, 1.9])
def test_fixed_point_residual_is_monotone_inside_bound(linear, fraction):
    """0 < rho < 2 beta (Sec. 3.4): ||T(z_k)|| never increases."""
    _, record = fixed_point(linear.encode, linear.decode, linear.x, iters=60, rho=fraction * linear.beta)
    r = record.residual
    assert torch.all(r[1:] <= r[:-1] * (1 + 1e-5) + 1e-7)
    assert torch.all(r[-1] < r[0])


def test_fixed_point_diverges_far_above_bound(linear):
    """Documents what happens outside the bound: rho = 5 makes the residual blow up."""
    _, record = fixed_point(linear.encode, linear.decode, linear.x, iters=30, rho=5.0)
    assert torch.all(record.residual[-1] > 1e3 * record.residual[0])


def test_tolerance_stops_each_sample_early(linear):
    _, record = fixed_point(linear.encode, linear.decode, linear.x, iters=500, tol=1e-3)
    assert torch.all(record.iterations < 500)
    final = record.residual.gather(0, record.iterations.view(1, -1)).squeeze(0)  # the stopping iterate
    assert torch.all(final <= 1e-3)
    for b, k in enumerate(record.iterations.tolist()):  # once stopped, nothing more is recorded for b
        assert torch.isnan(record.residual[k + 1 :, b]).all() and not torch.isnan(record.residual[: k + 1, b]).any()


def _graph_probe(linear):
    seen = []

    def decode(z):
        seen.append(torch.is_grad_enabled() and z.requires_grad)
        return linear.decode(z)

    return decode, seen


@pytest.mark.parametrize("method", ["fixed_point", "inertial_km", "adam", "encoder"])
def test_gradient_free_methods_build_no_graph(linear, method):
    decode, seen = _graph_probe(linear)
    z, _ = invert_decoder(method, linear.encode, decode, linear.x, **({} if method == "encoder" else {"iters": 5}))
    assert not any(seen) and z.grad_fn is None and not z.requires_grad


def test_gradient_method_builds_a_graph(linear):
    decode, seen = _graph_probe(linear)
    z, _ = gradient(linear.encode, decode, linear.x, iters=3)
    assert seen and all(seen)
    assert not z.requires_grad  # the returned latent is detached


def test_callback_sees_every_iteration(linear):
    calls = []
    fixed_point(linear.encode, linear.decode, linear.x, iters=7, callback=calls.append)
    assert [c["i"] for c in calls] == list(range(7))
    assert set(calls[0]) >= {"i", "z", "residual", "pixel_error"}
