"""Every multiplicity of one verdict in one place: the keys tested (Šidák: independent
directions), the geometric transforms tried and the looks taken at the image (Bonferroni: tests
of one image under nearby transforms, or after two recoveries, are dependent, which Bonferroni
allows). ``p`` corrects a raw p-value, ``threshold`` is the raw p-value a test must reach."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def sidak(p: float, m: int) -> float:
    """Šidák correction of the smallest of m independent p-values: 1 - (1 - p)^m."""
    return float(-np.expm1(m * np.log1p(-p))) if p < 1 else 1.0


@dataclass(frozen=True, kw_only=True)
class Correction:
    keys: int = 1
    transforms: int = 1
    looks: int = 1

    def __post_init__(self):
        for name in ("keys", "transforms", "looks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def bonferroni(self) -> int:
        """The tests of one key: transforms x looks."""
        return self.transforms * self.looks

    def p(self, raw: float) -> float:
        """The corrected p-value of the best raw one."""
        return sidak(min(1.0, self.bonferroni * raw), self.keys)

    def threshold(self, alpha: float) -> float:
        """The largest raw p-value whose corrected p is <= alpha."""
        return float(-np.expm1(np.log1p(-alpha) / self.keys)) / self.bonferroni
