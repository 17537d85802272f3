"""Recovering the initial noise of a latent diffusion model: decoder inversion, then DDIM inversion.

Every function works on plain callables and numbers, so the library never needs to know which
network sits behind them: ``encode(x) -> z`` (the posterior mean, scaled latents),
``decode(z) -> x``, ``eps(z, t, **extra_args)``, and a ``DDIMSchedule`` of timesteps and alpha_bar.
Every decoder-inversion method takes the same keywords (``z0, iters, tol, dtype, callback`` and
its own step sizes) and returns ``(z, InversionRecord)``.
"""

from ._checks import DTYPES
from .adam import adam
from .ddim import DDIMSchedule, ddim_inverse_step, ddim_inverse_step_v, ddim_invert, ddim_sample, ddim_schedule, ddim_step
from .encoder import encoder
from .fixed_point import fixed_point
from .gradient import gradient
from .inertial_km import inertial_km
from .methods import METHODS, invert_decoder
from .record import InversionRecord

__all__ = [
    "DTYPES", "METHODS", "DDIMSchedule", "InversionRecord", "adam", "ddim_inverse_step", "ddim_inverse_step_v",
    "ddim_invert", "ddim_sample", "ddim_schedule", "ddim_step", "encoder", "fixed_point", "gradient", "inertial_km",
    "invert_decoder",
]
