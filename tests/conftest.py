import numpy as np
import pytest
import torch


class LinearPair:
    """D(z) = A z and an approximate inverse E = (I + P) A^+, so that E∘D = I + P.

    P is small with a positive-definite symmetric part, so T(z) = E(D(z)) - E(x) is
    cocoercive, and E(x) = (I + P) z* differs from z*.
    """

    def __init__(self, seed=20241127, latent=(4, 4, 4), pixels=(3, 8, 8), batch=3):
        rng = np.random.default_rng(seed)
        n, m = int(np.prod(latent)), int(np.prod(pixels))
        self.latent, self.pixels = latent, pixels
        A = rng.standard_normal((m, n)) / np.sqrt(n)
        Q = rng.standard_normal((n, n)) / np.sqrt(n)
        S = 0.1 * Q @ Q.T + 0.05 * np.eye(n)  # symmetric positive definite part
        K = 0.1 * (Q - Q.T) / 2  # skew part
        self.M = np.eye(n) + S + K  # E∘D
        self.A = torch.tensor(A, dtype=torch.float32)
        self.E = torch.tensor(self.M @ np.linalg.pinv(A), dtype=torch.float32)
        Minv = np.linalg.inv(self.M)
        self.beta = float(np.linalg.eigvalsh((Minv + Minv.T) / 2).min())  # cocoercivity constant of T
        self.z_star = torch.tensor(rng.standard_normal((batch, *latent)), dtype=torch.float32)
        self.x = self.decode(self.z_star)

    def decode(self, z):
        return (z.flatten(1).to(self.A.dtype) @ self.A.T).reshape(len(z), *self.pixels).to(z.dtype)

    def encode(self, x):
        return (x.flatten(1).to(self.E.dtype) @ self.E.T).reshape(len(x), *self.latent).to(x.dtype)

    def rel_error(self, z):
        return float((z.float() - self.z_star).norm() / self.z_star.norm())


@pytest.fixture
def linear():
    return LinearPair()
