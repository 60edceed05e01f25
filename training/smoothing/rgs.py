"""Randomised gradient smoothing: the first-order estimate of the smoothed gradient.

grad L_sigma(theta) = E_eps[grad L(theta + eps)], eps ~ N(0, sigma^2 I), estimated by the
mean of the gradients at n perturbed weight vectors (antithetic pairs by default, which
cancels the odd terms of the noise). All n gradients come from one vmapped call of the
differentiable bound program, chunked to the memory budget like PGPE's population.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SmoothingConfigError
from .fitness import PopulationObjective


@dataclass(frozen=True)
class RGSOptions:
    samples: int = 16
    sigma: float = 1e-3
    symmetric: bool = True

    def validate(self) -> None:
        if self.samples < 1:
            raise SmoothingConfigError(f"RGS needs at least 1 sample, got {self.samples}")
        if self.symmetric and self.samples % 2:
            raise SmoothingConfigError(
                f"RGS samples must be even with symmetric sampling, got {self.samples}"
            )
        if not self.sigma > 0:
            raise SmoothingConfigError(f"RGS sigma must be > 0, got {self.sigma}")


def perturbations(
    center: torch.Tensor, options: RGSOptions, generator: torch.Generator
) -> torch.Tensor:
    """``[samples, n]`` weight vectors around ``center`` (rows 2i, 2i+1 = centre +/- eps_i)."""
    n = options.samples // 2 if options.symmetric else options.samples
    noise = options.sigma * torch.randn(
        n, center.numel(), generator=generator, device=center.device, dtype=center.dtype
    )
    if options.symmetric:
        return torch.stack([center + noise, center - noise], dim=1).reshape(options.samples, -1)
    return center + noise


def smoothed_gradient(
    objective: PopulationObjective,
    center: torch.Tensor,
    options: RGSOptions,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean loss, mean gradient) over the perturbed weights: estimates of L_sigma, grad L_sigma."""
    values = perturbations(center, options, generator)
    losses, grads = objective.gradients(values)
    return losses.mean(), grads.mean(dim=0)
