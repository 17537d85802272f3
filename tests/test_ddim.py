"""The sampler and its inversion over a smooth model: DDIM against diffusers' DDIMScheduler (VP,
eps-prediction), Euler against FlowMatchEulerDiscreteScheduler (rectified flow)."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

from inversion import ddim_invert, ddim_sample, ddim_schedule, flow_schedule
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


ALPHAS = make_scheduler().alphas_cumprod.double()


def predict(z, t):
    """``eps_model`` as the pair (x_0, eps) a model adapter hands the sampler."""
    a, b = float(ALPHAS[t]) ** 0.5, float(1 - ALPHAS[t]) ** 0.5
    eps = eps_model(z, t)
    return (z - b * eps) / a, eps


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
    ours = ddim_sample(predict, z_T, schedule_of(make_scheduler(), 20))
    theirs = sample_with_diffusers(z_T, 20)
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def test_naive_inversion_error_shrinks_with_steps(z_T):
    errors = []
    for steps in (5, 10, 25, 50):
        z_0 = sample_with_diffusers(z_T, steps)
        errors.append(rel(ddim_invert(predict, z_0, schedule_of(make_scheduler(), steps), hold="eps"), z_T))
    assert all(b < a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.05


def test_exact_inversion_below_1e_4(z_T):
    z_0 = sample_with_diffusers(z_T, 10)
    schedule = schedule_of(make_scheduler(), 10)
    naive = rel(ddim_invert(predict, z_0, schedule, hold="eps"), z_T)  # Tree-Ring's step for an eps model
    exact = rel(ddim_invert(predict, z_0, schedule, exact=True, refine_iters=8, hold="eps"), z_T)
    assert exact < 1e-4 < naive


def test_conditioning_passes_through(z_T):
    seen = []

    def conditioned(z, t, cond):
        seen.append(cond)
        return predict(z, t)

    ddim_invert(conditioned, z_T, schedule_of(make_scheduler(), 3), extra_args={"cond": "c"})
    assert seen == ["c"] * 3


def test_schedule_matches_diffusers_spacing():
    scheduler = make_scheduler()
    schedule = schedule_of(scheduler, 50)
    reference = DDIMScheduler.from_config(scheduler.config)
    reference.set_timesteps(50)
    assert list(schedule.timesteps) == reference.timesteps.tolist()
    # each step lands where DDIMScheduler.step lands: t - T // n
    assert schedule.a_next[0] ** 2 == pytest.approx(float(scheduler.alphas_cumprod[schedule.timesteps[0] - 20]))
    assert schedule.a_next[-1] ** 2 == pytest.approx(float(scheduler.alphas_cumprod[0]))  # set_alpha_to_one=False
    assert all(a * a + b * b == pytest.approx(1.0) for a, b in zip(schedule.a, schedule.b))



def test_holding_v_solves_the_same_equation(z_T):
    """Holding v instead of eps fixed changes how each step's fixed point is reached, not where it is."""
    z_0 = sample_with_diffusers(z_T, 10)
    schedule = schedule_of(make_scheduler(), 10)
    held_v = ddim_invert(predict, z_0, schedule, exact=True, refine_iters=30, hold="v")
    held_eps = ddim_invert(predict, z_0, schedule, exact=True, refine_iters=30, hold="eps")
    assert rel(held_v, z_T) < 1e-4 and rel(held_eps, z_T) < 1e-4


def velocity(z, t):
    """A smooth stand-in for a flow transformer: u = eps - x_0 at sigma = t / 1000."""
    s = t / 1000.0
    return 0.4 * torch.tanh(z) * (1 - s) + 0.6 * z + 0.05 * torch.cos(2 * z)


def flow_predict(z, t):
    s = t / 1000.0
    u = velocity(z, t)
    return z - s * u, z + (1 - s) * u  # z = (1 - s) x_0 + s eps and u = eps - x_0


def flow_run(steps, shift=3.0):
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    return scheduler, flow_schedule(scheduler.sigmas.tolist(), scheduler.timesteps.tolist())


def test_one_step_is_flow_match_euler(z_T):
    """For a linear flow the sampler's step is the Euler step of diffusers' FlowMatchEulerDiscreteScheduler."""
    scheduler, schedule = flow_run(12)
    z = z_T
    for t in scheduler.timesteps:
        z = scheduler.step(velocity(z, float(t)), t, z).prev_sample
    ours = ddim_sample(flow_predict, z_T, schedule)
    assert torch.allclose(ours, z, rtol=1e-5, atol=1e-5)
    assert schedule.a[0] == 1 - schedule.b[0] and schedule.b_next[-1] == 0.0


def test_flow_inversion_exact_and_naive(z_T):
    """Inversion of a flow from sigma = 1: no division anywhere (a_T = 0). Exact reaches the
    fixed point; naive carries the step's discretisation error."""
    _, schedule = flow_run(20)
    assert schedule.a[0] == 0.0
    z_0 = ddim_sample(flow_predict, z_T, schedule)
    naive = rel(ddim_invert(flow_predict, z_0, schedule), z_T)
    exact = rel(ddim_invert(flow_predict, z_0, schedule, exact=True, refine_iters=10), z_T)
    assert exact < 1e-6 and naive < 0.1, (exact, naive)
