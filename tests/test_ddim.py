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
    # exact is accurate, and better than naive by a margin (not: naive is bad by some amount)
    assert exact < 1e-4 and exact < naive / 100, (exact, naive)


def test_conditioning_passes_through(z_T):
    seen = []

    def conditioned(z, t, cond):
        seen.append(cond)
        return predict(z, t)

    ddim_invert(conditioned, z_T, schedule_of(make_scheduler(), 3), extra_args={"cond": "c"})
    assert seen == ["c"] * 3


def landing(reference, t, x0, eps):
    """Where diffusers' DDIMScheduler.step (eta = 0) takes z_t = a x_0 + b eps when the network
    predicts exactly (x_0, eps): read off the step itself, in the scheduler's own terms."""
    ab = float(reference.alphas_cumprod[t])
    a, b = ab**0.5, (1 - ab) ** 0.5
    z = a * x0 + b * eps
    out = {"epsilon": eps, "v_prediction": a * eps - b * x0}[reference.config.prediction_type]
    return reference.step(out, t, z, eta=0.0).prev_sample


@pytest.mark.parametrize("steps", [1, 2, 3, 7, 10, 50])
@pytest.mark.parametrize("source", ["tiny", "sd-eps"])
def test_schedule_matches_ddim_scheduler(source, steps):
    """ringmark's schedule (what the model adapter hands the sampler and the inversion: the bundled
    model's ``schedule(steps)``, zero-terminal-SNR, trailing, v-prediction; and ``ddim_schedule`` over
    SD's eps, leading-spacing config) against an independent DDIMScheduler built from the same
    config: the same timesteps, a = sqrt(alphas_cumprod[t]) and b = sqrt(1 - a^2) at each, and each
    step landing where DDIMScheduler.step lands (also where T / steps is not a whole number)."""
    if source == "tiny":
        from watermark.models import NAMED, get_model

        schedule = get_model("tiny").schedule(steps)
        reference = DDIMScheduler.from_pretrained(str(NAMED["tiny"] / "scheduler"))  # the model's own config file
    else:
        schedule = schedule_of(make_scheduler(), steps)
        reference = DDIMScheduler.from_config(make_scheduler().config)
    reference.set_timesteps(steps)
    assert list(schedule.timesteps) == reference.timesteps.tolist()
    alphas = reference.alphas_cumprod.double()
    assert schedule.a == pytest.approx([float(alphas[t]) ** 0.5 for t in reference.timesteps], abs=1e-7)
    assert schedule.b == pytest.approx([float(1 - alphas[t]) ** 0.5 for t in reference.timesteps], abs=1e-7)
    g = torch.Generator().manual_seed(steps)
    x0, eps = torch.randn(2, 64, generator=g, dtype=torch.float64), torch.randn(2, 64, generator=g, dtype=torch.float64)
    for t, a_next, b_next in zip(reference.timesteps, schedule.a_next, schedule.b_next):
        theirs = landing(reference, t, x0, eps)
        assert torch.allclose(a_next * x0 + b_next * eps, theirs, atol=1e-6), (int(t), a_next, b_next)
    if reference.config.timestep_spacing == "trailing":
        assert schedule.timesteps[0] == 999 and schedule.a[0] == 0.0  # zero terminal SNR: pure noise at T
    # the last step lands on alpha_bar_0, not 1 (set_alpha_to_one=False in both configs)
    assert schedule.a_next[-1] ** 2 == pytest.approx(float(alphas[0]))


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
    assert exact < 1e-6 and exact < naive / 100 and naive < 0.1, (exact, naive)
