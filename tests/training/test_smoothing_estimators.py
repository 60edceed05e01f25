"""Estimators of the smoothed gradient on functions whose Gaussian smoothing is closed-form."""

from __future__ import annotations

import math

import pytest
import torch

from absdsl.training.smoothing.errors import SmoothingConfigError
from absdsl.training.smoothing.estimators import (
    ESTIMATORS,
    antithetic_cv_gradient,
    check_estimator,
    estimate,
    pgpe_gradient,
    rgs_gradient,
)

DT = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _quadratic() -> tuple:
    g = _gen(0)
    m = torch.randn(5, 5, generator=g, dtype=DT)
    a = m @ m.T + torch.eye(5, dtype=DT)
    b = torch.randn(5, generator=g, dtype=DT)

    def loss(p: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((p @ a) * p).sum(1) + p @ b + 3.0

    def grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss(p), p @ a + b

    return loss, grad, a, b


def test_quadratic_smoothed_gradient_is_exact_for_cv_and_rgs_and_unbiased_for_pgpe() -> None:
    loss, grad, a, b = _quadratic()
    theta = torch.linspace(-1, 1, 5, dtype=DT)
    truth = a @ theta + b  # Gaussian smoothing leaves a quadratic's gradient unchanged
    for seed in range(3):
        cv = antithetic_cv_gradient(loss, grad, theta, 0.5, 4, _gen(seed))
        assert torch.allclose(cv.gradient, truth, atol=1e-10)
        assert (cv.loss_evals, cv.grad_evals) == (4, 1)
        rgs = rgs_gradient(grad, theta, 0.5, 4, _gen(seed))
        assert torch.allclose(rgs.gradient, truth, atol=1e-10)
        assert (rgs.loss_evals, rgs.grad_evals) == (0, 4)
    pg = pgpe_gradient(loss, theta, 0.5, 200_000, _gen(1))
    assert (pg.loss_evals, pg.grad_evals) == (200_000, 0)
    assert (pg.gradient - truth).norm() < 0.05 * truth.norm()
    few = pgpe_gradient(loss, theta, 0.5, 4, _gen(1))
    assert (few.gradient - truth).norm() > 1e-3  # PGPE alone is noisy on a quadratic


def test_linear_loss_gives_cv_zero_variance() -> None:
    c = torch.tensor([1.0, -2.0, 0.5], dtype=DT)

    def loss(p: torch.Tensor) -> torch.Tensor:
        return p @ c

    def grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss(p), c.expand_as(p)

    theta = torch.zeros(3, dtype=DT)
    draws = torch.stack([antithetic_cv_gradient(loss, grad, theta, 1e-2, 2, _gen(s)).gradient
                         for s in range(10)])
    assert torch.allclose(draws, c.expand_as(draws), atol=1e-12)
    pg = torch.stack([pgpe_gradient(loss, theta, 1e-2, 2, _gen(s)).gradient for s in range(10)])
    assert float(pg.var(0).sum()) > 0.1  # the zeroth-order estimate is not


def _sines() -> tuple:
    freq = torch.tensor([1.0, 3.0, 7.0, 0.5], dtype=DT)
    amp = torch.tensor([1.0, 0.5, 0.2, 2.0], dtype=DT)

    def loss(p: torch.Tensor) -> torch.Tensor:
        return (amp * torch.sin(freq * p)).sum(1)

    def grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss(p), amp * freq * torch.cos(freq * p)

    def smoothed(theta: torch.Tensor, sigma: float) -> torch.Tensor:
        # E sin(a (t + e)) = sin(a t) exp(-a^2 sigma^2 / 2) for e ~ N(0, sigma^2)
        return amp * freq * torch.cos(freq * theta) * torch.exp(-(freq * sigma) ** 2 / 2)

    return loss, grad, smoothed


@pytest.mark.parametrize("name", ESTIMATORS)
def test_every_estimator_is_unbiased_on_a_smooth_nonpolynomial_loss(name: str) -> None:
    loss, grad, smoothed = _sines()
    theta = torch.tensor([0.3, -0.2, 0.1, 1.0], dtype=DT)
    sigma = 0.4
    truth = smoothed(theta, sigma)
    assert (truth - grad(theta[None])[1][0]).norm() > 0.3  # smoothing changes the gradient
    est = estimate(name, loss, grad, theta, sigma, 100_000, _gen(7))
    assert (est.gradient - truth).norm() < 0.05 * truth.norm()


def test_cv_has_lower_variance_than_pgpe_at_small_sigma() -> None:
    loss, grad, _ = _sines()
    theta = torch.tensor([0.3, -0.2, 0.1, 1.0], dtype=DT)
    cv = torch.stack([antithetic_cv_gradient(loss, grad, theta, 1e-2, 8, _gen(s)).gradient
                      for s in range(20)])
    pg = torch.stack([pgpe_gradient(loss, theta, 1e-2, 8, _gen(s)).gradient for s in range(20)])
    assert float(cv.var(0).sum()) < 1e-3 * float(pg.var(0).sum())


def test_at_a_jump_rgs_is_biased_while_pgpe_and_cv_are_not() -> None:
    """L = 1[t_0 > 0]: grad L = 0 almost everywhere, grad L_sigma = phi(t_0 / sigma) / sigma."""

    def loss(p: torch.Tensor) -> torch.Tensor:
        return (p[:, 0] > 0).to(DT)

    def grad(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return loss(p), torch.zeros_like(p)

    sigma = 0.5
    theta = torch.tensor([0.2, 0.0], dtype=DT)
    truth = math.exp(-0.5 * (0.2 / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    rgs = rgs_gradient(grad, theta, sigma, 10_000, _gen(3)).gradient
    assert float(rgs.abs().max()) == 0.0
    for est in (pgpe_gradient(loss, theta, sigma, 100_000, _gen(3)),
                antithetic_cv_gradient(loss, grad, theta, sigma, 100_000, _gen(3))):
        assert abs(float(est.gradient[0]) - truth) < 0.03 * truth
        assert abs(float(est.gradient[1])) < 0.03 * truth


def test_cost_counts_a_gradient_as_given() -> None:
    loss, grad, _, _ = _quadratic()
    cv = antithetic_cv_gradient(loss, grad, torch.zeros(5, dtype=DT), 0.1, 6, _gen(0))
    assert cv.cost(2.5) == 6 + 2.5


@pytest.mark.parametrize(("name", "sigma", "samples", "match"), [
    ("nes", 1e-3, 4, "allowed: pgpe, rgs, antithetic-cv"),
    ("pgpe", 0.0, 4, "sigma must be a finite number > 0"),
    ("rgs", -1e-3, 4, "sigma must be"),
    ("antithetic-cv", 1e-3, 5, "even integer >= 2"),
    ("antithetic-cv", 1e-3, 0, "even integer >= 2"),
])
def test_bad_estimator_options_are_refused(name: str, sigma: float, samples: int,
                                           match: str) -> None:
    with pytest.raises(SmoothingConfigError, match=match):
        check_estimator(name, sigma, samples)
