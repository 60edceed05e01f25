"""The resolved training configuration: defaults < dataset preset < TOML file < flags.

Configs are TOML (read with tomllib, never evaluated). The run folder keeps the resolved
config as ``config.toml``, which can be fed back with ``--config``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from absdsl import domains as registry
from absdsl.errors import AbsdslError
from absdsl.training.data import dataset_info

from .loss_fusion import LossFusionError, check_fusable
from .programs import DomainError, canonical_domain


class ConfigError(AbsdslError):
    """A config file or flag that is malformed, unknown or out of range."""


METHODS = ("certified", "pgd", "sabr", "mtl-ibp", "natural")


DEFAULT_STEP_RULE = "grad"


@dataclass
class TrainConfig:
    """Everything that determines a training run. ``None`` fields come from the preset."""

    dataset: str = "mnist5k"
    data_root: str | None = None
    download: bool = False
    model: str = "cnn3"
    domain: str = "box"
    method: str = "certified"
    optimizer: str = DEFAULT_STEP_RULE  # the step rule (--optimizer; training/steprule.py)
    eps: float = 0.1
    train_eps: float | None = None  # eps trained for; defaults to eps
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_milestones: list[int] | None = None  # decay after these epochs
    lr_decay: float | None = None
    grad_clip: float | None = None
    warmup_epochs: int | None = None  # natural epochs (eps = 0) before the ramp
    ramp_epochs: int | None = None  # epochs of the smooth eps ramp
    ramp_power: float = 4.0
    ramp_mid: float = 0.25
    kappa: float = 0.0  # weight of the natural loss at the end of the ramp
    kappa_start: float | None = None  # weight at the start of the ramp (defaults to kappa)
    beta_start: float = 1.0  # CROWN-IBP mixing (1 = all CROWN-IBP) at the start of the ramp
    beta_end: float = 0.0  # ... and at its end; equal to beta_start for "CROWN-IBP (R)"
    init: str = "ibp"  # "ibp" (Shi et al.) or "default" (torch's Kaiming uniform)
    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5
    pgd_steps: int = 8  # PGD for training points (pgd, sabr, mtl-ibp)
    pgd_restarts: int = 1
    eval_pgd_steps: int = 20
    eval_pgd_restarts: int = 3
    eval_every: int = 1  # test natural accuracy every n epochs (0: only at the end)
    certify_domain: str | None = None  # domain of the final certification (default: domain)
    tolerance: float = 1e-6
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    device: str = "cpu"
    loss_fusion: bool = False  # bound the robust CE itself: one row per sample
    torch_compile: bool = False  # bound programs through torch.compile
    options: dict[str, Any] = field(default_factory=dict)  # step-rule options ([pgpe] table)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Appendix B of the smoothing paper for the full data sets; a short schedule for mnist5k that
# trains CNN3 + Box to its target within the README's time budget on two CPU cores.
PRESETS: dict[str, dict[str, Any]] = {
    "mnist5k": dict(
        epochs=40, batch_size=64, lr=2e-3, lr_milestones=[30, 36], lr_decay=0.2,
        grad_clip=10.0, warmup_epochs=1, ramp_epochs=20,
    ),
    "mnist": dict(
        epochs=70, batch_size=256, lr=5e-5, lr_milestones=[50, 60], lr_decay=0.2,
        grad_clip=10.0, warmup_epochs=0, ramp_epochs=20,
    ),
    "fashion-mnist": dict(
        epochs=70, batch_size=256, lr=5e-5, lr_milestones=[50, 60], lr_decay=0.2,
        grad_clip=10.0, warmup_epochs=0, ramp_epochs=20,
    ),
    "cifar10": dict(
        epochs=160, batch_size=128, lr=5e-5, lr_milestones=[120, 140], lr_decay=0.2,
        grad_clip=10.0, warmup_epochs=0, ramp_epochs=80,
    ),
}

FIELD_NAMES = {f.name for f in fields(TrainConfig)}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys may use '-' or '_'. Unknown keys are errors."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {p} not found") from err
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {p} is not valid TOML: {err}") from err
    out: dict[str, Any] = {}
    options: dict[str, Any] = dict(raw.pop("options", {}) or {})
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in FIELD_NAMES:
            out[name] = value
        elif isinstance(value, dict):  # a table named after a step rule, e.g. [pgpe]
            options.update(value)
        else:
            raise ConfigError(f"config file {p}: unknown key {key!r}")
    if options:
        out["options"] = options
    return out


def parse_option(text: str) -> tuple[str, Any]:
    """``key=value`` with value read as a TOML value (number, bool, string, list)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"option {text!r}: expected key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def resolve(overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the data set's preset, then ``overrides`` (file and flags merged)."""

    unknown = set(overrides) - FIELD_NAMES
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    info = dataset_info(cfg.dataset)
    cfg.dataset = info.name
    for key, value in PRESETS[info.name].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    if cfg.train_eps is None:
        cfg.train_eps = cfg.eps
    if cfg.kappa_start is None:
        cfg.kappa_start = cfg.kappa
    if cfg.lr_milestones is not None:
        cfg.lr_milestones = [int(m) for m in cfg.lr_milestones]
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Range checks with messages that name the setting."""

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    for name in ("eps", "train_eps"):
        v = getattr(cfg, name)
        need(
            isinstance(v, int | float) and math.isfinite(v) and 0.0 <= v <= 1.0,
            f"{name} must lie in [0, 1] (pixel units), got {v}",
        )
    need(cfg.method in METHODS,
         f"unknown method {cfg.method!r}; choose one of {', '.join(METHODS)}")
    need(int(cfg.epochs or 0) >= 1, f"epochs must be >= 1, got {cfg.epochs}")
    need(int(cfg.batch_size or 0) >= 1, f"batch_size must be >= 1, got {cfg.batch_size}")
    need(float(cfg.lr or 0) > 0, f"lr must be > 0, got {cfg.lr}")
    need(cfg.grad_clip is None or cfg.grad_clip >= 0, "grad_clip must be >= 0 (0 disables)")
    need(int(cfg.warmup_epochs or 0) >= 0 and int(cfg.ramp_epochs or 0) >= 0,
         "warmup_epochs and ramp_epochs must be >= 0")
    for name in ("kappa", "kappa_start", "beta_start", "beta_end", "mtl_alpha"):
        v = getattr(cfg, name)
        need(0.0 <= v <= 1.0, f"{name} must lie in [0, 1], got {v}")
    need(0.0 < cfg.sabr_lambda <= 1.0, f"sabr_lambda must lie in (0, 1], got {cfg.sabr_lambda}")
    need(cfg.init in ("ibp", "default"), f"init must be 'ibp' or 'default', got {cfg.init!r}")
    need(registry.optimize_steps(cfg.domain) == 0,
         f"domain {cfg.domain!r} optimises its relaxations by gradient on every call (its bounds "
         f"carry no gradient to the model): it certifies (certify_domain), it does not train; "
         f"train with deeppoly")
    need(cfg.tolerance > 0, f"tolerance must be > 0, got {cfg.tolerance}")
    need(cfg.eval_every >= 0, "eval_every must be >= 0")
    for name in ("loss_fusion", "torch_compile"):
        need(isinstance(getattr(cfg, name), bool),
             f"{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.loss_fusion:
        _check_loss_fusion(cfg)
    need(not cfg.torch_compile or cfg.optimizer == "grad",
         f"torch_compile (--compile) applies to the grad optimizer; {cfg.optimizer!r} "
         f"evaluates populations under vmap, which runs the eager programs")


def _check_loss_fusion(cfg: TrainConfig) -> None:
    """``loss_fusion`` with a domain or method it cannot fuse: a ConfigError before training."""
    try:
        domain = canonical_domain(cfg.domain)
    except DomainError:
        domain = cfg.domain
    try:
        check_fusable(domain, cfg.method)
    except LossFusionError as err:
        raise ConfigError(str(err)) from err


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(key: str) -> str:
    bare = key.replace("_", "").replace("-", "")
    return key if bare.isalnum() and bare.isascii() else _toml_value(key)


def dump_toml(cfg: TrainConfig) -> str:
    """The resolved config as TOML (``None`` fields are left out; they mean 'default')."""
    lines = ["# absdsl train: resolved configuration", ""]
    data = cfg.to_dict()
    options = data.pop("options") or {}
    for key, value in data.items():
        if value is not None:
            lines.append(f"{key} = {_toml_value(value)}")
    if options:
        lines += ["", "[options]"]
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in options.items() if v is not None]
    return "\n".join(lines) + "\n"
