"""Noise schedules alpha_t for the masking forward process (reference/mdlm.md §1.3).

Each schedule gives alpha(t) (probability a token is still clean at time t), and the continuous-time
NELBO weight -alpha'(t) / (1 - alpha(t)). The NELBO's value does not depend on the schedule, only its
variance does; log-linear (the default) has the lowest variance and its weight is exactly 1/t.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-3  # alpha(1) = EPS: hard-coded in the reference implementation for log-linear and cosine


class Schedule:
    name = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dalpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """-alpha'(t) / (1 - alpha(t)) >= 0, the per-token weight of the cross-entropy."""
        return -self.dalpha(t) / (1.0 - self.alpha(t))

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Total noise -log alpha(t): what a time-conditioned network is fed (MDLM/SEDD convention)."""
        return -torch.log(self.alpha(t))


class LogLinear(Schedule):
    """alpha = 1 - (1 - eps) t; weight = 1/t exactly.

    eps defaults to 0 here (the reference uses 1e-3): then every token is masked at t=1, the prior term
    is exactly zero, and a model that predicts uniformly over ACGT scores exactly ln 4 in expectation.
    With eps > 0 the estimator silently drops a prior term and undershoots by a factor (1 - eps), so it
    would not be an upper bound.
    """

    name = "loglinear"

    def __init__(self, eps: float = 0.0):
        self.eps = eps

    def alpha(self, t):
        return 1.0 - (1.0 - self.eps) * t

    def dalpha(self, t):
        return torch.full_like(t, -(1.0 - self.eps))

    def weight(self, t):
        return 1.0 / t


class Cosine(Schedule):
    """alpha = eps + (1 - eps) cos(pi t / 2)."""

    name = "cosine"

    def __init__(self, eps: float = EPS):
        self.eps = eps

    def alpha(self, t):
        return self.eps + (1.0 - self.eps) * torch.cos(math.pi / 2 * t)

    def dalpha(self, t):
        return -(1.0 - self.eps) * math.pi / 2 * torch.sin(math.pi / 2 * t)


class Linear(Schedule):
    """sigma(t) = sigma_min + t (sigma_max - sigma_min); alpha = exp(-sigma)."""

    name = "linear"

    def __init__(self, sigma_min: float = 1e-3, sigma_max: float = 7.0):
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sigma(self, t):
        return self.sigma_min + t * (self.sigma_max - self.sigma_min)

    def alpha(self, t):
        return torch.exp(-self.sigma(t))

    def dalpha(self, t):
        return -(self.sigma_max - self.sigma_min) * self.alpha(t)

    def weight(self, t):
        # sigma' / expm1(sigma): the stable form of -alpha'/(1-alpha)
        return (self.sigma_max - self.sigma_min) / torch.expm1(self.sigma(t))


SCHEDULES = {"loglinear": LogLinear, "cosine": Cosine, "linear": Linear}


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise ValueError(f"unknown noise schedule {name!r}; choose one of {sorted(SCHEDULES)}")
    return SCHEDULES[name]()
