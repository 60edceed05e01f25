"""Step rules: how one optimisation step updates the model (GRAD here; PGPE/RGS plug in).

The training loop owns data, schedules, checkpoints and metrics; a step rule owns only the
update. ``--optimizer NAME`` picks the factory registered under NAME, called as
``factory(model, config, programs)`` with the resolved :class:`TrainConfig` and the compiled
bound programs by domain name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from absdsl.errors import AbsdslError


@dataclass
class TrainBatch:
    """One (local) batch with the schedule values at its step.

    ``weight`` is this batch's share of the global batch (1 in one process); a data-parallel
    step rule scales its local mean loss by it before summing gradients over ranks.
    """

    x: torch.Tensor
    y: torch.Tensor
    eps: float
    epoch: int
    step: int
    beta: float = 1.0
    kappa: float = 0.0
    weight: float = 1.0


@runtime_checkable
class StepRule(Protocol):
    name: str

    def step(self, batch: TrainBatch) -> dict[str, float]:
        """Update the model's parameters in place; return metrics to log (at least 'loss')."""
        ...

    def state_dict(self) -> dict:
        """Everything needed to resume, saveable with torch.save and loadable weights_only."""
        ...

    def load_state_dict(self, state: dict) -> None: ...

    def on_epoch_end(self, epoch: int) -> None:
        """Called after each finished epoch (0-based): learning-rate decay and the like."""
        ...


Factory = Callable[[nn.Module, Any, dict[str, Any]], StepRule]
_REGISTRY: dict[str, Factory] = {}


class UnknownStepRuleError(AbsdslError):
    """--optimizer names a rule that no module registered."""


class NonFiniteLossError(AbsdslError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def register_step_rule(name: str, factory: Factory) -> None:
    """Make ``--optimizer name`` available. Re-registering a name replaces it."""
    _REGISTRY[name] = factory


def available_step_rules() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def make_step_rule(name: str, model: nn.Module, config: Any, programs: dict[str, Any]) -> StepRule:
    """Build the step rule registered under ``name`` (plugins are imported on demand)."""
    from . import grad  # noqa: F401 - registers "grad"

    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise UnknownStepRuleError(
            f"unknown optimizer {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name](model, config, programs)


def _load_plugins() -> None:
    """Import the smoothing package (PGPE, RGS) if it exists; it registers its own rules."""
    if "pgpe" in _REGISTRY:
        return
    import importlib

    try:
        importlib.import_module("absdsl.training.smoothing")
    except ModuleNotFoundError as err:
        if err.name is None or not "absdsl.training.smoothing".startswith(err.name):
            raise


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop with a message naming where the loss stopped being a number."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the loss became {value} at epoch {epoch + 1}, step {step} "
            "(try a smaller --lr or a longer eps ramp); the last good checkpoint is kept"
        )
