"""Recovering the initial noise of a latent diffusion model: decoder inversion, then DDIM inversion.

Every function works on plain callables and numbers, so the library never needs to know which
network sits behind them: ``encode(x) -> z`` (the posterior mean, scaled latents),
``decode(z) -> x``, ``predict(z, t, **extra_args) -> (x_0, eps)``, and a ``Schedule`` of timesteps and
the (a_t, b_t) of z_t = a_t x_0 + b_t eps (VP diffusion and rectified flow alike).
Every decoder-inversion method takes the same keywords (``z0, iters, tol, dtype, callback`` and
its own step sizes) and returns ``(z, InversionRecord)``.
"""

from ._checks import DTYPES
from .adam import adam
from .anderson import anderson
from .attack_aware import attack_aware
from .ddim import Schedule, ddim_invert, ddim_sample, ddim_schedule, ddim_step, flow_schedule, inverse_step
from .encoder import encoder
from .fixed_point import fixed_point
from .gradient import gradient
from .inertial_km import inertial_km
from .methods import ITERATIVE, METHODS, invert_decoder
from .record import InversionRecord

__all__ = [
    "DTYPES", "ITERATIVE", "METHODS", "InversionRecord", "Schedule", "adam", "anderson", "attack_aware", "ddim_invert", "ddim_sample", "ddim_schedule",
    "ddim_step", "encoder", "fixed_point", "flow_schedule", "gradient", "inertial_km", "inverse_step", "invert_decoder",
]
