"""Step rules: how one optimisation step updates the model (GRAD here; PGPE/RGS plug in).

The training loop owns data, schedules, checkpoints and metrics; a step rule owns only the
update. ``--optimizer NAME`` picks the factory registered under NAME, called as
``factory(model, config, programs)`` with the resolved :class:`TrainConfig` and the compiled
bound programs by domain name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

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


Reduction = Literal["mean", "last", "sum", "min", "max"]
REDUCTIONS: tuple[str, ...] = ("mean", "last", "sum", "min", "max")

# Options that only shape a fresh start. A resumed run takes its weights and step-rule state
# from its own checkpoint, so these are dropped before the rule is rebuilt (the file they
# name need not exist any more).
FRESH_START_OPTIONS: frozenset[str] = frozenset({"init_checkpoint"})


@runtime_checkable
class StepRule(Protocol):
    """What the loop needs from an update rule.

    Besides the methods below, the loop reads these when present (see :func:`rule_lr`,
    :func:`rule_reductions`, :func:`close_rule`): ``current_lr()``, ``close()``,
    ``metric_reductions`` (metric name -> how an epoch reduces it: ``mean`` weighted by batch
    size, the default, ``last``, ``sum``, ``min`` or ``max``) and ``progress_metrics`` (names
    shown on the progress bar next to loss, eps and accuracy).
    """

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

    # ``current_lr()`` (the learning rate the next step uses, logged as ``lr``) and ``close()``
    # (release Ray actors and the like; called in a ``finally``) are optional, so they are not
    # members here: a rule without them is still a StepRule.


def rule_lr(rule: Any) -> float:
    """The rule's learning rate: ``current_lr()``, else its torch optimiser's, else NaN."""
    current = getattr(rule, "current_lr", None)
    if callable(current):
        return float(current())
    opt = getattr(rule, "optimizer", None)
    if opt is not None and hasattr(opt, "param_groups"):
        return float(opt.param_groups[0]["lr"])
    return float("nan")


def rule_reductions(rule: Any) -> dict[str, str]:
    """How the loop reduces each of the rule's metrics over an epoch (default: mean)."""
    declared: Mapping[str, str] = getattr(rule, "metric_reductions", None) or {}
    for key, how in declared.items():
        if how not in REDUCTIONS:
            raise ValueError(
                f"step rule {getattr(rule, 'name', rule)!r}: metric {key!r} has reduction "
                f"{how!r}; use one of {', '.join(REDUCTIONS)}"
            )
    return dict(declared)


def close_rule(rule: Any) -> None:
    """Call the rule's ``close()`` if it has one."""
    close = getattr(rule, "close", None)
    if callable(close):
        close()


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


def make_step_rule(
    name: str, model: nn.Module, config: Any, programs: dict[str, Any], *, resume: bool = False
) -> StepRule:
    """Build the step rule registered under ``name`` (plugins are imported on demand).

    With ``resume`` the rule is about to receive a checkpoint's state, so the options in
    :data:`FRESH_START_OPTIONS` are left out of the config it sees.
    """
    from . import grad  # noqa: F401 - registers "grad"

    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise UnknownStepRuleError(
            f"unknown optimizer {name!r}; available: {', '.join(sorted(_REGISTRY))}"
        )
    if resume:
        config = _without_fresh_start_options(config)
    return _REGISTRY[name](model, config, programs)


def _without_fresh_start_options(config: Any) -> Any:
    """A shallow copy of ``config`` whose ``options`` lack the fresh-start-only keys."""
    options = dict(getattr(config, "options", None) or {})
    kept = {k: v for k, v in options.items() if k.replace("-", "_") not in FRESH_START_OPTIONS}
    if len(kept) == len(options):
        return config
    out = copy.copy(config)
    out.options = kept
    return out


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
