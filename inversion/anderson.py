"""The forward step method of Hong et al. (NeurIPS 2024), Eq. (4), accelerated by Anderson
mixing: the fixed point z = g(z), g(z) = z - rho (E(D(z)) - E(x)), is sought from the last few
iterates together instead of the last one alone. The paper does not use it.

Anderson acceleration, type II (Walker & Ni, "Anderson acceleration for fixed-point iterations",
SIAM J. Numer. Anal. 2011): with f_k = g(z_k) - z_k and the differences of the last ``memory``
f's and g's as the columns of dF and dG,

    gamma = argmin || f_k - dF gamma ||,    z_{k+1} = z_k - dZ gamma + beta (f_k - dF gamma),

(dZ the differences of the iterates; with beta = 1, z_{k+1} = g(z_k) - dG gamma),

a least-squares problem of ``memory`` unknowns per sample. Each iteration costs what the forward
step costs, one E(D(z)); gamma costs a (memory x memory) solve. Written here because torch and
scipy have no batched Anderson solver (scipy.optimize.anderson solves one system, on NumPy).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import check_common, check_positive
from .record import InversionRecord, ResidualTracker

RESTART = 2.0  # a residual this many times the last one: the history misleads; start it again


@torch.inference_mode()
def anderson(
    encode: Callable,
    decode: Callable,
    x: torch.Tensor,
    *,
    z0: torch.Tensor | None = None,
    iters: int = 20,
    rho: float = 0.5,
    memory: int = 5,
    beta: float = 1.0,
    ridge: float = 1e-6,
    tol: float | None = None,
    dtype: torch.dtype | None = None,
    callback: Callable | None = None,
    target: Callable | None = None,
) -> tuple[torch.Tensor, InversionRecord]:
    """Anderson-accelerated forward step (type II, ``memory`` past steps, mixing ``beta``).

    Same contract and fixed point as ``fixed_point`` (same ``rho``); ``ridge`` regularises the
    least-squares problem relative to its scale. A sample whose residual jumps RESTART-fold
    restarts its history from the plain step. ``z0`` defaults to E(x). ``target``: as in
    ``fixed_point`` (``attack_aware`` with ``memory`` uses it).
    """
    check_common(iters, tol, dtype)
    for name, value in (("rho", rho), ("beta", beta), ("memory", memory), ("ridge", ridge)):
        check_positive(name, value)
    dtype = dtype or x.dtype
    run = ResidualTracker("anderson", encode, decode, x, dtype=dtype, tol=tol, callback=callback, target=target)
    z = (run.Ex if z0 is None else z0).float().clone(memory_format=torch.contiguous_format)
    flat = z.view(len(z), -1)  # shares z's storage: updating flat updates z
    history = _History(len(z), memory)
    for k in range(iters):
        idx, r = run.residual(z, k)  # 1. T(z_k) = E(D(z_k)) - E(x)
        if len(idx) == 0:
            break
        f = -rho * r.flatten(1)  # 2. f_k = g(z_k) - z_k
        g = flat[idx] + f
        history.push(idx, f, g, run.residuals[-1])
        flat[idx] = history.mix(idx, f, g=g, z=flat[idx], beta=beta, ridge=ridge)  # 3. z_{k+1}
        if run.done:
            break
    return run.finish(z, x.dtype)


class _History:
    """The last ``memory`` differences of f and g, per sample (zeros where a sample has fewer)."""

    def __init__(self, batch: int, memory: int):
        self.memory = memory
        self.dF: list[torch.Tensor] = []  # each (B, N)
        self.dG: list[torch.Tensor] = []
        self.last: tuple | None = None  # (f, g, relative residual) of every sample's last step
        self.count = torch.zeros(batch, dtype=torch.long)  # how many differences each sample holds

    def push(self, idx: torch.Tensor, f: torch.Tensor, g: torch.Tensor, rel: torch.Tensor) -> None:
        cpu = idx.cpu()
        if self.last is None:
            self.last = (torch.zeros(len(self.count), f.shape[1], device=f.device, dtype=f.dtype),
                         torch.zeros(len(self.count), f.shape[1], device=f.device, dtype=f.dtype),
                         torch.full((len(self.count),), float("inf")))
        f_last, g_last, rel_last = self.last
        df, dg = torch.zeros_like(f_last), torch.zeros_like(g_last)
        df[idx], dg[idx] = f - f_last[idx], g - g_last[idx]
        self.dF, self.dG = (self.dF + [df])[-self.memory :], (self.dG + [dg])[-self.memory :]
        first = torch.isinf(rel_last[cpu])
        jumped = rel[cpu] > RESTART * rel_last[cpu]
        self.count[cpu] = torch.where(first | jumped, 0, (self.count[cpu] + 1).clamp_max(self.memory))
        f_last[idx], g_last[idx] = f, g
        rel_last[cpu] = rel[cpu]

    def mix(self, idx: torch.Tensor, f: torch.Tensor, g: torch.Tensor, z: torch.Tensor, beta: float,
            ridge: float) -> torch.Tensor:
        """z_{k+1} of the samples ``idx``: Anderson's mixture, or the plain step g (beta-damped)
        where a sample holds no history."""
        plain = (1 - beta) * z + beta * g
        if not self.dF:
            return plain
        dF = torch.stack(self.dF, 1)[idx]  # (b, m, N)
        dG = torch.stack(self.dG, 1)[idx]
        m = dF.shape[1]
        held = torch.arange(m, device=dF.device).flip(0) < self.count[idx.cpu()].to(dF.device).view(-1, 1)  # newest
        dF, dG = dF * held[..., None], dG * held[..., None]
        A = dF @ dF.transpose(1, 2)  # (b, m, m)
        scale = A.diagonal(dim1=1, dim2=2).sum(-1).clamp_min(1e-30).view(-1, 1, 1)
        A = A + ridge * scale * torch.eye(m, device=A.device) + torch.diag_embed((~held).float())
        gamma = torch.linalg.solve(A, dF @ f.unsqueeze(-1))  # (b, m, 1): zero on unheld columns
        dZ = dG - dF  # differences of the iterates, as g = z + f
        out = z - dZ.transpose(1, 2).bmm(gamma).squeeze(-1) + beta * (f - dF.transpose(1, 2).bmm(gamma).squeeze(-1))
        none = self.count[idx.cpu()].to(out.device) == 0
        return torch.where(none.view(-1, 1), plain, out)
