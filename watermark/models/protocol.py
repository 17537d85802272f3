"""What ringmark needs of a model family: the protocol every adapter implements.

The pipeline (``watermark.pipeline``) and the embedding see a model only through these members;
a new family is one file in this folder that implements them, plus one line in ``FAMILIES``
(``models/__init__.py``). One member is optional: ``default_guidance``, the guidance ``embed``
generates at and records when the caller gives none (7.5 without it), for a model whose guidance is
a setting verify's inversion must share (FLUX-dev's guidance input, ``models/flux.py``).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch

from inversion import Schedule


class ModelError(Exception):
    """The model cannot be loaded or does not fit the request (one-line message)."""


@runtime_checkable
class DiffusionModel(Protocol):
    """A latent diffusion model seen as callables. Latents are scaled to unit variance; images
    are (B, 3, H, W) in [-1, 1], except ``generate``'s output, in [0, 1] for saving."""

    name: str

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def default_size(self) -> int:
        """Image side (px) the model was made for."""

    @property
    def downsample(self) -> int:
        """Image pixels per latent cell, along a side."""

    @property
    def default_key_channel(self) -> int:
        """The latent channel a key is written to unless the user picks one."""

    @property
    def conditional(self) -> bool:
        """Whether the model takes a prompt."""

    @property
    def hold(self) -> Literal["eps", "v"]:
        """Which part of the prediction DDIM inversion holds fixed (``inversion.ddim.inverse_step``),
        in the naive step and in each iteration of exact inversion: "v" makes exact inversion's
        fixed point contract on every schedule, zero terminal SNR included; "eps" is Tree-Ring's
        step for eps-prediction checkpoints."""

    @property
    def default_recovery(self) -> dict:
        """The recovery ``verify`` runs unless told otherwise, as measured for this model:
        ``method``, ``iters``, ``ddim_steps``, and where declared ``refine`` and ``photometric``
        (``pipeline.Recovery.for_model``)."""

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        """(C, H, W) of the latents of ``size``-px square images; ModelError for a size it cannot take."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> latents: the encoder's posterior mean."""

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents -> images."""

    def condition(self, prompts: list[str] | None = None) -> Any:
        """What ``predict`` is conditioned on, opaque to everything but the adapter: the prompts'
        embeddings (and whatever else the network takes: pooled embeddings, time ids, guidance);
        None (the empty prompt, at the model's guidance where guidance is an input) is what inversion uses."""

    def predict(self, z: torch.Tensor, t: float, cond: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, eps) the network implies at z_t = a_t x_0 + b_t eps, whatever it predicts (eps, v,
        a flow velocity); ``cond`` from ``condition`` (None: the empty prompt)."""

    def schedule(self, steps: int, hw: tuple[int, int] | None = None) -> Schedule:
        """Timesteps and (a, b) of a ``steps``-step deterministic run at latent size ``hw`` (default:
        the model's), the one ``generate`` takes (``inversion.ddim``: DDIM for VP models, Euler for
        flows; FLUX shifts its schedule by the number of image tokens)."""

    def generate(self, z_T: torch.Tensor, steps: int = 50, prompts: list[str] | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Images in [0, 1] (float32, CPU) generated from the initial noise z_T."""
