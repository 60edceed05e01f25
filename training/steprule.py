"""Step rules: how one optimisation step updates the model, and their registry.

The training loop owns data, schedules, checkpoints and metrics; a step rule owns only the
update. Each rule's module registers it here with :func:`register_step_rule`, together with
its options (``config.options`` keys, offered as flags by ``absdsl train``); importing
:mod:`absdsl.training.builtin_rules` registers the built-in ones (``grad``, ``pgpe``, ``rgs``).
This module imports none of them. Users pick a rule with ``--optimizer NAME`` (the config key
``optimizer``): the factory registered under NAME is called as
``factory(model, config, programs)`` with the resolved :class:`TrainConfig` and the compiled
bound programs by domain name.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable, Iterable, Mapping
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


@dataclass(frozen=True)
class RuleOption:
    """One option of a step rule: its ``config.options`` key, type and help (flag ``--key``)."""

    key: str
    kind: type
    help: str


_OPTIONS: dict[str, dict[str, RuleOption]] = {}
OPTION_DEST_PREFIX = "rule_"  # argparse dest of an option's flag: rule_<key>


class UnknownStepRuleError(AbsdslError):
    """--optimizer names a rule that no module registered."""


class StepRuleOptionError(AbsdslError):
    """Two step rules declare the same option with different types."""


class NonFiniteLossError(AbsdslError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def register_step_rule(name: str, factory: Factory, options: Iterable[RuleOption] = ()) -> None:
    """Make ``--optimizer name`` available, with its options. Re-registering replaces it."""
    _REGISTRY[name] = factory
    _OPTIONS[name] = {option.key: option for option in options}
    rule_options()  # a clash with another rule's option is an error now, not at parse time


def available_step_rules() -> list[str]:
    return sorted(_REGISTRY)


def rule_options() -> dict[str, tuple[RuleOption, list[str]]]:
    """Every registered option once (key -> the option, the rules that take it)."""
    merged: dict[str, tuple[RuleOption, list[str]]] = {}
    for name, options in _OPTIONS.items():
        for key, option in options.items():
            if key in merged and merged[key][0].kind is not option.kind:
                raise StepRuleOptionError(
                    f"step rule {name!r}: option {key!r} is {option.kind.__name__}, but "
                    f"{', '.join(merged[key][1])} declare it {merged[key][0].kind.__name__}")
            merged.setdefault(key, (option, []))[1].append(name)
    return merged


def add_rule_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per registered option (``--popsize``, ``--sigma``, ...), grouped per rule set."""
    groups: dict[tuple[str, ...], Any] = {}
    for key, (option, names) in rule_options().items():
        rules = tuple(names)
        if rules not in groups:
            listed = "|".join(rules)
            groups[rules] = parser.add_argument_group(
                f"{' / '.join(r.upper() for r in rules)} (with --optimizer {listed})")
        flag, dest = "--" + key.replace("_", "-"), OPTION_DEST_PREFIX + key
        if option.kind is bool:
            groups[rules].add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                                       default=None, help=option.help)
        else:
            groups[rules].add_argument(flag, dest=dest, type=option.kind, default=None,
                                       help=option.help, metavar=key.upper())


def rule_options_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of :func:`add_rule_arguments` that were given, as a ``config.options`` dict."""
    out = {}
    for key in rule_options():
        value = getattr(args, OPTION_DEST_PREFIX + key, None)
        if value is not None:
            out[key] = value
    return out


def make_step_rule(
    name: str, model: nn.Module, config: Any, programs: dict[str, Any], *, resume: bool = False
) -> StepRule:
    """Build the step rule registered under ``name``.

    With ``resume`` the rule is about to receive a checkpoint's state, so the options in
    :data:`FRESH_START_OPTIONS` are left out of the config it sees.
    """
    if name not in _REGISTRY:
        raise UnknownStepRuleError(
            f"unknown optimizer {name!r} (--optimizer names a step rule); available: "
            f"{', '.join(sorted(_REGISTRY))}"
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


def check_finite(loss: torch.Tensor, epoch: int, step: int) -> None:
    """Stop with a message naming where the loss stopped being a number."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"the loss became {value} at epoch {epoch + 1}, step {step} "
            "(try a smaller --lr or a longer eps ramp); the last good checkpoint is kept"
        )
