"""The deterministic sampler of DDIM (eta = 0) and its inversion, z_0 -> z_T, for any model whose
noisy latents are z_t = a_t x_0 + b_t eps: VP diffusion (a, b) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)),
rectified flow (a, b) = (1 - sigma, sigma).

A model gives its prediction as the pair (x_0, eps) it implies at z_t (``predict(z, t)``), whatever
its network predicts (eps, v or a flow velocity; the adapter converts). One step is then

    z' = a' x_0 + b' eps                                        (Song et al., ICLR 2021, Eq. 12)

which for a linear flow is the Euler step z' = z + (sigma' - sigma)(eps - x_0) (Liu et al., ICLR
2023; Esser et al., ICML 2024). Inversion solves that step for z given z': naively with the
prediction at z' (Tree-Ring), or exactly by fixed-point iteration of the implicit equation
(backward Euler; Hong et al., "On Exact Inversion of DPM-Solvers", CVPR 2024). Nothing here divides
by a_t, so a schedule that starts at pure noise (a_T = 0: zero terminal SNR, every flow) needs no
floor. Timesteps are whatever the model's ``predict`` takes (integers for a DDPM-trained UNet,
floats for a flow transformer); the adapter reads them and (a, b) off its diffusers scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

Hold = Literal["v", "eps"]


@dataclass(frozen=True)
class Schedule:
    """Timesteps t_1 > ... > t_n of a sampling run, the (a, b) of each, and the (a, b) each step
    lands on: z_t = a x_0 + b eps."""

    timesteps: tuple[float, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]
    a_next: tuple[float, ...]
    b_next: tuple[float, ...]

    def __post_init__(self):
        n = len(self.timesteps)
        if n == 0 or any(len(v) != n for v in (self.a, self.b, self.a_next, self.b_next)):
            raise ValueError("a schedule needs timesteps and (a, b), (a_next, b_next) for each, at least one")

    def steps(self) -> list[tuple[float, float, float, float, float]]:
        """(t, a, b, a_next, b_next) per step, in sampling order."""
        return list(zip(self.timesteps, self.a, self.b, self.a_next, self.b_next))


def ddim_schedule(alphas_cumprod: Sequence[float], timesteps: Sequence[int], final_alpha_cumprod: float) -> Schedule:
    """The schedule of a VP model's DDIM run over ``timesteps`` (descending), in float64.

    Each step from t lands on t - T // n (T = len(alphas_cumprod), n = len(timesteps)), as
    diffusers' ``DDIMScheduler.step`` does; below 0 it lands on ``final_alpha_cumprod``.
    """
    alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    ts = [int(t) for t in timesteps]
    if not ts or any(not 0 <= t < len(alphas_cumprod) for t in ts):
        raise ValueError(f"timesteps must be a non-empty list in [0, {len(alphas_cumprod)}), got {ts[:3]}...")
    ratio = len(alphas_cumprod) // len(ts)
    at = [float(alphas_cumprod[t]) for t in ts]
    prev = [float(alphas_cumprod[t - ratio]) if t - ratio >= 0 else float(final_alpha_cumprod) for t in ts]
    return Schedule(tuple(ts), tuple(v**0.5 for v in at), tuple((1 - v) ** 0.5 for v in at),
                    tuple(v**0.5 for v in prev), tuple((1 - v) ** 0.5 for v in prev))


def flow_schedule(sigmas: Sequence[float], timesteps: Sequence[float]) -> Schedule:
    """The schedule of a rectified-flow run: ``sigmas`` s_1 > ... > s_n > s_{n+1} (the last one
    where the run ends, usually 0), as diffusers' ``FlowMatchEulerDiscreteScheduler.sigmas``; the
    model is called at ``timesteps`` (its ``timesteps``, e.g. 1000 s)."""
    s = [float(v) for v in sigmas]
    ts = [float(t) for t in timesteps]
    if len(s) != len(ts) + 1 or not ts or any(not 0 <= v <= 1 for v in s):
        raise ValueError(f"need n + 1 sigmas in [0, 1] for n timesteps, got {len(s)} and {len(ts)}")
    return Schedule(tuple(ts), tuple(1 - v for v in s[:-1]), tuple(s[:-1]), tuple(1 - v for v in s[1:]), tuple(s[1:]))


def ddim_step(x0: torch.Tensor, eps: torch.Tensor, a_next: float, b_next: float) -> torch.Tensor:
    """The prediction (x_0, eps) at z_t, taken to the next noise level: Eq. (12) of Song et al. with sigma = 0."""
    return a_next * x0 + b_next * eps


def inverse_step(z_next: torch.Tensor, z: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, a: float, b: float,
                 a_next: float, b_next: float, hold: Hold = "v") -> torch.Tensor:
    """z_next -> z: ``ddim_step`` solved for z, for the prediction (x0, eps) made at z, holding one
    part of it fixed while z moves (a prediction at z satisfies z = a x0 + b eps, so one part and z
    fix the other):

    - "v": w = -b x0 + a eps, the prediction's component across z in the (x0, eps) plane: for VP,
      v of Salimans & Ho (ICLR 2022), where the step is a rotation and the fixed point contracts by
      |tan| of the step's angle, also at a_T = 0 (zero terminal SNR); for a flow, near the velocity.
      Then z_next = A z + B w, A = (a a' + b b') / (a^2 + b^2), B = (a b' - b a') / (a^2 + b^2).
    - "eps": eps held, x0 = (z - b eps) / a: Tree-Ring's and Hong et al.'s step. Undefined at
      a = 0; it does not contract where eps(z) ~ z.

    With ``exact=True`` both solve the same implicit equation; they reach its fixed point differently.
    """
    if hold == "eps":
        return a / a_next * (z_next - b_next * eps) + b * eps
    norm = a * a + b * b
    w = -b * x0 + a * eps
    return (z_next - (a * b_next - b * a_next) / norm * w) / ((a * a_next + b * b_next) / norm)


@torch.inference_mode()
def ddim_sample(predict: Callable, z_T: torch.Tensor, schedule: Schedule, extra_args: dict | None = None,
                callback: Callable | None = None) -> torch.Tensor:
    """Deterministic sampling from z_T to z_0 with ``predict(z, t, **extra_args) -> (x0, eps)``."""
    extra_args = extra_args or {}
    z = z_T
    for i, (t, a, b, a_next, b_next) in enumerate(schedule.steps()):
        z = ddim_step(*predict(z, t, **extra_args), a_next, b_next)
        if callback is not None:
            callback({"i": i, "t": t, "z": z})
    return z


def ddim_invert_graph(
    predict: Callable,
    z_0: torch.Tensor,
    schedule: Schedule,
    *,
    exact: bool = False,
    refine_iters: int = 3,
    hold: Hold = "v",
    extra_args: dict | None = None,
    callback: Callable | None = None,
) -> torch.Tensor:
    """Inversion z_0 -> z_T, the steps of ``ddim_sample`` taken backwards.

    Naive (Tree-Ring): each step uses the prediction at the point it starts from, predict(z_next, t).
    ``exact=True``: then ``refine_iters`` fixed-point iterations of the implicit equation of the
    sampler's step (backward Euler, Hong et al. CVPR 2024), each one more model evaluation.
    ``hold``: which part of the prediction each iteration holds fixed (``inverse_step``).
    """
    if not isinstance(refine_iters, int) or refine_iters < 0:
        raise ValueError(f"refine_iters must be a non-negative integer, got {refine_iters!r}")
    if hold not in ("eps", "v"):
        raise ValueError(f"hold must be one of ('eps', 'v'), got {hold!r}")
    extra_args = extra_args or {}
    z = z_0
    for i, (t, a, b, a_next, b_next) in enumerate(schedule.steps()[::-1]):
        z_next = z
        for _ in range(1 + (refine_iters if exact else 0)):  # 1. naive: the prediction at z_next; 2. fixed point
            x0, eps = predict(z, t, **extra_args)
            z = inverse_step(z_next, z, x0, eps, a=a, b=b, a_next=a_next, b_next=b_next, hold=hold)
        if callback is not None:
            callback({"i": i, "t": t, "z": z})
    return z


# the same steps without autograd; ``ddim_invert_graph`` keeps the graph, for attacks that
# backpropagate through the inversion (``watermark.bench.security``)
ddim_invert = torch.inference_mode()(ddim_invert_graph)
