"""Step-rule options for PGPE and RGS: read from the run config, checked before any work.

The training config carries step-rule options in ``config.options`` (the ``[pgpe]`` /
``[options]`` TOML table or ``--option key=value``); :func:`rule_options` declares them with
the ``pgpe`` and ``rgs`` rules, so that ``absdsl train`` offers each as a flag too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..steprule import RuleOption
from .errors import SmoothingConfigError
from .pgpe import OPTIMIZERS, RANKINGS, PGPEOptions
from .rgs import RGSOptions

MiB = 1024 * 1024

# option key -> (type, help). Keys use '_' (TOML and flags with '-' are normalised).
OPTION_HELP: dict[str, tuple[type, str]] = {
    "popsize": (int, "PGPE population size (even with symmetric sampling; paper: 256)"),
    "sigma": (float, "initial std of the weight perturbations (paper: 1e-3)"),
    "center_lr": (float, "PGPE centre learning rate (default: --lr)"),
    "sigma_lr": (float, "PGPE sigma learning rate (0 keeps sigma fixed)"),
    "sigma_max_change": (float, "largest relative change of sigma per step"),
    "center_optimizer": (str, f"PGPE centre optimiser: {', '.join(OPTIMIZERS)}"),
    "ranking": (str, f"PGPE fitness shaping: {', '.join(RANKINGS)}"),
    "symmetric": (bool, "antithetic (+/-) sampling"),
    "rgs_samples": (int, "RGS and antithetic-cv: perturbed weight vectors per step"),
    "memory_budget_mib": (float, "memory one vmapped population call may use (MiB)"),
    "chunk_size": (int, "members per vmapped call (overrides the memory budget)"),
    "population_eval": (str, "how populations are split into calls: auto (CPU: the fastest "
                             "of a member loop and vmapped chunks, measured; GPU: the largest "
                             "chunk), vmap or loop"),
    "num_actors": (int, "evaluate populations on this many Ray actors (0: in process)"),
    "gpus_per_actor": (float, "GPUs per Ray actor"),
    "ray_address": (str, "address of a running Ray cluster (default: start a local one)"),
    "init_checkpoint": (str, "start from this checkpoint's weights (e.g. a PGD-trained model)"),
}


@dataclass(frozen=True)
class SmoothingOptions:
    """Everything PGPE and RGS read from the run config, validated."""

    pgpe: PGPEOptions
    rgs: RGSOptions
    memory_budget: int | None
    chunk_size: int | None
    population_eval: str
    num_actors: int
    gpus_per_actor: float | None
    ray_address: str | None
    init_checkpoint: str | None


def _coerce(key: str, value: Any) -> Any:
    kind, _ = OPTION_HELP[key]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise SmoothingConfigError(f"option {key} must be true or false, got {value!r}")
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in (int, float) and isinstance(value, str):
        try:
            value = kind(value)
        except ValueError as err:
            raise SmoothingConfigError(f"option {key} must be a number, got {value!r}") from err
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise SmoothingConfigError(
            f"option {key} must be {kind.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


def parse_options(raw: dict[str, Any], *, lr: float, seed: int) -> SmoothingOptions:
    """Validate ``config.options``; unknown keys are errors (a typo must not be ignored)."""
    opts: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = key.replace("-", "_")
        if name not in OPTION_HELP:
            raise SmoothingConfigError(
                f"unknown PGPE/RGS option {key!r}; known: {', '.join(sorted(OPTION_HELP))}"
            )
        if value is not None:
            opts[name] = _coerce(name, value)
    sigma = opts.get("sigma", 1e-3)
    symmetric = opts.get("symmetric", True)
    pgpe = PGPEOptions(
        popsize=opts.get("popsize", 256),
        sigma_init=sigma,
        center_lr=opts.get("center_lr", lr),
        sigma_lr=opts.get("sigma_lr", 0.1),
        optimizer=opts.get("center_optimizer", "adam"),
        ranking=opts.get("ranking", "centered"),
        symmetric=symmetric,
        sigma_max_change=opts.get("sigma_max_change", 0.2),
        seed=seed,
    )
    rgs = RGSOptions(samples=opts.get("rgs_samples", 16), sigma=sigma, symmetric=symmetric)
    budget = opts.get("memory_budget_mib")
    if budget is not None and budget <= 0:
        raise SmoothingConfigError(f"memory_budget_mib must be > 0, got {budget}")
    chunk = opts.get("chunk_size")
    if chunk is not None and chunk < 1:
        raise SmoothingConfigError(f"chunk_size must be >= 1, got {chunk}")
    mode = opts.get("population_eval", "auto")
    if mode not in ("auto", "vmap", "loop"):
        raise SmoothingConfigError(
            f"population_eval must be auto, vmap or loop, got {mode!r}"
        )
    actors = opts.get("num_actors", 0)
    if actors < 0:
        raise SmoothingConfigError(f"num_actors must be >= 0, got {actors}")
    return SmoothingOptions(
        pgpe=pgpe,
        rgs=rgs,
        memory_budget=None if budget is None else int(budget * MiB),
        chunk_size=chunk,
        population_eval=mode,
        num_actors=actors,
        gpus_per_actor=opts.get("gpus_per_actor"),
        ray_address=opts.get("ray_address"),
        init_checkpoint=opts.get("init_checkpoint"),
    )


def rule_options() -> tuple[RuleOption, ...]:
    """The options PGPE and RGS register with their step rules (flags of ``absdsl train``)."""
    return tuple(RuleOption(key, kind, text) for key, (kind, text) in OPTION_HELP.items())
