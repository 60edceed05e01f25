"""Estimators of the Gaussian-smoothed gradient grad L_sigma(theta), as pure functions.

L_sigma(theta) = E_{eps ~ N(0, sigma^2 I)} L(theta + eps). Three estimators, each from m
antithetic pairs (theta + eps_i, theta - eps_i), i.e. ``samples = 2 m`` perturbed weights:

* ``pgpe`` (zeroth order, loss values only; Stein's identity):
  ``g = sum_i eps_i (L(theta + eps_i) - L(theta - eps_i)) / (2 m sigma^2)``.
  Unbiased for any measurable L, also where L jumps; its variance grows like
  ``|grad L|^2 n / m`` with the number n of weights.
* ``rgs`` (first order): ``g = mean over the 2 m members of grad L(theta +- eps_i)``.
  Unbiased only where L is differentiable almost everywhere *and* continuous: at a jump
  the expected gradient misses the jump's contribution to grad L_sigma.
* ``antithetic-cv`` (both): the zeroth-order estimate with the gradient at the centre as a
  control variate, ``g = grad L(theta) + sum_i eps_i [(L(theta + eps_i) - L(theta - eps_i)) / 2
  - grad L(theta) . eps_i] / (m sigma^2)``. Since ``E[eps eps^T] = sigma^2 I`` the
  subtracted term has expectation ``grad L(theta)``, so the estimate is unbiased wherever
  that gradient exists (jumps included); where L is locally linear (or quadratic: the
  antithetic difference cancels the even part) every bracket is zero and so is the variance.

Each function takes the loss of a population ``loss_fn([P, n]) -> [P]`` and/or its
gradients ``grad_fn([P, n]) -> ([P] losses, [P, n] gradients)`` (what
:class:`~absdsl.training.smoothing.fitness.PopulationObjective` offers as ``losses`` and
``gradients``), and returns the estimate with the evaluations it spent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import SmoothingConfigError

LossFn = Callable[[torch.Tensor], torch.Tensor]
GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

ESTIMATORS: tuple[str, ...] = ("pgpe", "rgs", "antithetic-cv")


@dataclass(frozen=True)
class Estimate:
    """A gradient estimate and its cost in loss and gradient evaluations (one per member)."""

    gradient: torch.Tensor
    loss_evals: int
    grad_evals: int

    def cost(self, grad_cost: float) -> float:
        """Cost in loss evaluations when one gradient evaluation costs ``grad_cost`` of them."""
        return self.loss_evals + grad_cost * self.grad_evals


def check_estimator(name: str, sigma: float, samples: int) -> None:
    """The estimator name, sigma > 0 and an even sample count (antithetic pairs), or raise."""
    if name not in ESTIMATORS:
        raise SmoothingConfigError(
            f"unknown estimator {name!r}; allowed: {', '.join(ESTIMATORS)}"
        )
    if not (math.isfinite(sigma) and sigma > 0):
        raise SmoothingConfigError(f"sigma must be a finite number > 0, got {sigma}")
    if isinstance(samples, bool) or int(samples) != samples or samples < 2 or samples % 2:
        raise SmoothingConfigError(
            f"estimator {name}: samples must be an even integer >= 2 (antithetic pairs "
            f"theta +- eps_i), got {samples}"
        )


def antithetic_noise(theta: torch.Tensor, sigma: float, pairs: int,
                     generator: torch.Generator) -> torch.Tensor:
    """``[pairs, n]`` Gaussian noise of std ``sigma`` (the eps_i of the pairs)."""
    return sigma * torch.randn(pairs, theta.numel(), generator=generator,
                               device=theta.device, dtype=theta.dtype)


def _pairs(theta: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``[2 m, n]``: rows 2i, 2i+1 are theta + eps_i, theta - eps_i."""
    return torch.stack([theta + noise, theta - noise], dim=1).reshape(-1, theta.numel())


def _half_differences(loss_fn: LossFn, theta: torch.Tensor,
                      noise: torch.Tensor) -> torch.Tensor:
    """``(L(theta + eps_i) - L(theta - eps_i)) / 2`` per pair."""
    losses = loss_fn(_pairs(theta, noise)).reshape(-1, 2)
    return (losses[:, 0] - losses[:, 1]) / 2


def pgpe_gradient(loss_fn: LossFn, theta: torch.Tensor, sigma: float, samples: int,
                  generator: torch.Generator) -> Estimate:
    """Zeroth-order antithetic estimate from ``samples`` loss values (raw, unranked)."""
    check_estimator("pgpe", sigma, samples)
    noise = antithetic_noise(theta, sigma, samples // 2, generator)
    half = _half_differences(loss_fn, theta, noise)
    grad = (half.unsqueeze(1) * noise).sum(0) / (noise.shape[0] * sigma**2)
    return Estimate(grad, loss_evals=samples, grad_evals=0)


def rgs_gradient(grad_fn: GradFn, theta: torch.Tensor, sigma: float, samples: int,
                 generator: torch.Generator) -> Estimate:
    """Mean gradient at ``samples`` antithetic perturbed weights."""
    check_estimator("rgs", sigma, samples)
    noise = antithetic_noise(theta, sigma, samples // 2, generator)
    _, grads = grad_fn(_pairs(theta, noise))
    return Estimate(grads.mean(0), loss_evals=0, grad_evals=samples)


def antithetic_cv_gradient(loss_fn: LossFn, grad_fn: GradFn, theta: torch.Tensor,
                           sigma: float, samples: int, generator: torch.Generator,
                           centre_gradient: torch.Tensor | None = None) -> Estimate:
    """Antithetic zeroth-order estimate with ``grad L(theta)`` as control variate.

    ``samples`` loss values plus one gradient at the centre (pass ``centre_gradient`` to
    reuse one already computed; it is then not counted).
    """
    check_estimator("antithetic-cv", sigma, samples)
    grad_evals = 0
    if centre_gradient is None:
        _, centre = grad_fn(theta.unsqueeze(0))
        centre_gradient = centre[0]
        grad_evals = 1
    noise = antithetic_noise(theta, sigma, samples // 2, generator)
    half = _half_differences(loss_fn, theta, noise)
    residual = half - noise @ centre_gradient
    correction = (residual.unsqueeze(1) * noise).sum(0) / (noise.shape[0] * sigma**2)
    return Estimate(centre_gradient + correction, loss_evals=samples, grad_evals=grad_evals)


def estimate(name: str, loss_fn: LossFn, grad_fn: GradFn, theta: torch.Tensor, sigma: float,
             samples: int, generator: torch.Generator) -> Estimate:
    """Dispatch on the estimator's name (one of :data:`ESTIMATORS`)."""
    check_estimator(name, sigma, samples)
    if name == "pgpe":
        return pgpe_gradient(loss_fn, theta, sigma, samples, generator)
    if name == "rgs":
        return rgs_gradient(grad_fn, theta, sigma, samples, generator)
    return antithetic_cv_gradient(loss_fn, grad_fn, theta, sigma, samples, generator)
