"""One input-validation test per public function of ``inversion``."""

import pytest
import torch

from inversion import (adam, ddim_invert, ddim_schedule, encoder, fixed_point, gradient, inertial_km,
                       invert_decoder)
from watermark.training.train import make_scheduler


def test_invert_decoder_rejects_unknown_method(linear):
    with pytest.raises(ValueError, match="method must be one of .*'adam'"):
        invert_decoder("newton", linear.encode, linear.decode, linear.x)


def test_encoder_rejects_bad_dtype(linear):
    with pytest.raises(ValueError, match="dtype must be one of"):
        encoder(linear.encode, linear.decode, linear.x, dtype=torch.int8)


@pytest.mark.parametrize("kwargs, match", [
    ({"rho": 0}, "rho must be positive"), ({"rho": -1.0}, "rho must be positive"),
    ({"iters": -1}, "iters must be"), ({"iters": 2.5}, "iters must be"), ({"tol": 0}, "tol must be positive"),
])
def test_fixed_point_rejects(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fixed_point(linear.encode, linear.decode, linear.x, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"alpha": 1.0}, r"alpha must be in \[0, 1\)"), ({"alpha": -0.1}, r"alpha must be in \[0, 1\)"),
    ({"lam": 0}, "lam must be positive"), ({"beta": -1}, "beta must be positive"),
    ({"alpha": 0.5, "lam": 0.5}, "violate lam"),
])
def test_inertial_km_rejects(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inertial_km(linear.encode, linear.decode, linear.x, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0}, "lr must be positive"), ({"betas": (0.9, 1.0)}, "betas must be in"), ({"iters": -3}, "iters"),
])
def test_adam_rejects(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        adam(linear.encode, linear.decode, linear.x, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": -0.1}, "lr must be positive"), ({"schedule": "linear"}, "schedule must be one of"),
])
def test_gradient_rejects(linear, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gradient(linear.encode, linear.decode, linear.x, **kwargs)


@pytest.mark.parametrize("timesteps", [[], [1000], [-1, 5]])
def test_ddim_schedule_rejects(timesteps):
    with pytest.raises(ValueError, match="timesteps must be"):
        ddim_schedule(make_scheduler().alphas_cumprod, timesteps, 1.0)


def test_ddim_invert_rejects_bad_refine_iters():
    with pytest.raises(ValueError, match="refine_iters must be"):
        ddim_invert(lambda z, t: z, torch.zeros(1, 4, 2, 2), ddim_schedule(make_scheduler().alphas_cumprod, [500, 0], 1.0),
                    refine_iters=-1)


def test_ddim_invert_rejects_unknown_hold():
    with pytest.raises(ValueError, match="hold must be one of"):
        ddim_invert(lambda z, t: z, torch.zeros(1, 4, 2, 2), ddim_schedule(make_scheduler().alphas_cumprod, [500, 0], 1.0),
                    hold="x0")
