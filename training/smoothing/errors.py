"""Errors of the smoothing optimizers, all raised before any work starts."""

from __future__ import annotations

from absdsl.errors import AbsdslError, MemoryBudgetError

__all__ = ["MemoryBudgetError", "RayUnavailableError", "SmoothingConfigError"]


class SmoothingConfigError(AbsdslError):
    """A PGPE/RGS option that cannot work: odd symmetric popsize, sigma <= 0, bad checkpoint."""


class RayUnavailableError(AbsdslError):
    """``num_actors`` was set but Ray is not installed or its cluster cannot be reached."""
