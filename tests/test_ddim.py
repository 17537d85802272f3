"""DDIM sampling and inversion over a smooth eps model, against diffusers' DDIMScheduler."""

import pytest
import torch
from diffusers import DDIMScheduler

from inversion import ddim_invert, ddim_sample, ddim_schedule
from watermark.training.train import make_scheduler as make_any_scheduler


def make_scheduler():
    """SD's schedule in eps: what ``eps_model`` stands in for."""
    return make_any_scheduler(zero_snr=False, prediction_type="epsilon")


def schedule_of(scheduler, steps):
    """What a model adapter hands the algorithms: timesteps and alpha_bar as plain numbers."""
    scheduler.set_timesteps(steps)
    return ddim_schedule(scheduler.alphas_cumprod, scheduler.timesteps.tolist(), float(scheduler.final_alpha_cumprod))


def eps_model(z, t):
    """Smooth, mildly nonlinear in z and t: a stand-in for a trained UNet."""
    s = t / 1000.0
    return 0.3 * torch.tanh(z) * (1 - s) + 0.2 * s * z + 0.05 * torch.sin(3 * z)


@pytest.fixture
def z_T():
    return torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(20241127), dtype=torch.float64)


def sample_with_diffusers(z_T, steps):
    scheduler = make_scheduler()
    scheduler.set_timesteps(steps)
    z = z_T
    for t in scheduler.timesteps:
        z = scheduler.step(eps_model(z, int(t)), t, z).prev_sample
    return z


def test_our_sampler_matches_ddim_scheduler(z_T):
    ours = ddim_sample(eps_model, z_T, schedule_of(make_scheduler(), 20))
    theirs = sample_with_diffusers(z_T, 20)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_naive_inversion_error_shrinks_with_steps(z_T):
    errors = []
    for steps in (5, 10, 25, 50):
        z_0 = sample_with_diffusers(z_T, steps)
        errors.append(rel(ddim_invert(eps_model, z_0, schedule_of(make_scheduler(), steps)), z_T))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05


def test_exact_inversion_below_1e_4(z_T):
    z_0 = sample_with_diffusers(z_T, 10)
    schedule = schedule_of(make_scheduler(), 10)
    naive = rel(ddim_invert(eps_model, z_0, schedule), z_T)
    exact = rel(ddim_invert(eps_model, z_0, schedule, exact=True, refine_iters=8), z_T)
    assert exact < 1e-4 < naive


def test_conditioning_passes_through(z_T):
    seen = []

    def eps(z, t, cond):
        seen.append(cond)
        return eps_model(z, t)

    ddim_invert(eps, z_T, schedule_of(make_scheduler(), 3), extra_args={"cond": "c"})
    assert seen == ["c"] * 3


def test_schedule_matches_diffusers_spacing():
    scheduler = make_scheduler()
    schedule = schedule_of(scheduler, 50)
    reference = DDIMScheduler.from_config(scheduler.config)
    reference.set_timesteps(50)
    assert list(schedule.timesteps) == reference.timesteps.tolist()
    # each step lands where DDIMScheduler.step lands: t - T // n
    assert schedule.alpha_bar_prev[0] == pytest.approx(float(scheduler.alphas_cumprod[schedule.timesteps[0] - 20]))
    assert schedule.alpha_bar_prev[-1] == pytest.approx(float(scheduler.alphas_cumprod[0]))  # set_alpha_to_one=False



def test_holding_v_solves_the_same_equation(z_T):
    """Holding v instead of eps fixed changes how each step's fixed point is reached, not where it is."""
    z_0 = sample_with_diffusers(z_T, 10)
    schedule = schedule_of(make_scheduler(), 10)
    held_v = ddim_invert(eps_model, z_0, schedule, exact=True, refine_iters=30, hold="v")
    held_eps = ddim_invert(eps_model, z_0, schedule, exact=True, refine_iters=30, hold="eps")
    assert rel(held_v, z_T) < 1e-4 and rel(held_eps, z_T) < 1e-4
