"""``absdsl paradox``: the paradox of certified training, measured on one architecture.

The protocol of the smoothing paper's section 4.1 ("Gaussian Loss Smoothing"): GRAD trains
the network with each domain (box, hbox, crown-ibp, deeppoly) from scratch (torch's Kaiming
uniform init, the eps ramp, Adam, gradient clipping; ``grad_start = "pgd"`` fine-tunes from
the PGD start instead); one network is PGD-trained (the shared start) and, from that
checkpoint, fine-tuned with each domain under PGPE and under RGS (the first-order estimate of
the same smoothed gradient). Every network is certified by the same cascade
(``certify_model`` with domain "tightest", same eps, same test inputs), and each domain's
tightness (the AUC of certified accuracy vs eps, ``analysis/tightness.py``) is measured on
the start and on the network the domain trained (``tightness_scope = "all"``: on every
network). The result is laid out like Table 1 of the paper: rows are domains, columns
natural / certified / adversarial accuracy per optimiser, plus tightness; written as
``paradox.json`` and ``paradox.png``. ``--estimate`` times a few steps of every run and
projects the experiment's wall time before it is started.

Every training goes through ``run_training`` (what ``absdsl train`` runs) into its own folder
``OUT/runs/<optimizer>-<domain>`` (``OUT/runs/pgd`` for the start). Running the command again
resumes: a finished run (marker written, final checkpoint present, config equal) is skipped, a
partial one continues from its newest checkpoint through the loop's resume support, and
certification and tightness results are cached per run, keyed by the checkpoint's hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.errors import AbsdslError

from .data import DatasetInfo

FORMAT = "absdsl-paradox"
VERSION = 1
CONFIG_FILE = "paradox_config.json"
RUN_MARKER = "paradox_run.json"  # in each run folder: status and the expected config
CERTIFY_CACHE = "paradox_certify.json"
TIGHTNESS_CACHE = "paradox_tightness.json"
OPTIMIZERS = ("grad", "pgpe", "rgs")
SMOOTHERS = ("pgpe", "rgs")  # fine-tune from the PGD start with a smoothed loss
GRAD_STARTS = ("scratch", "pgd")
TIGHTNESS_SCOPES = ("own", "all")
# settings that only matter when that optimiser runs (left out of the comparison otherwise)
STAGE_FIELDS: dict[str, tuple[str, ...]] = {
    "grad": ("grad_epochs", "grad_lr", "grad_milestones", "grad_decay", "grad_ramp_epochs",
             "grad_start", "grad_init", "grad_warmup_epochs", "grad_batches"),
    "pgpe": ("pgpe_epochs", "pgpe_lr", "pgpe_milestones", "pgpe_decay", "pgpe_ramp_epochs",
             "pgpe_batch_size", "popsize", "pgpe_batches"),
    "rgs": ("rgs_epochs", "rgs_lr", "rgs_milestones", "rgs_decay", "rgs_ramp_epochs",
            "rgs_batch_size", "rgs_samples", "rgs_batches"),
}
TABLE_DOMAINS = ("box", "hbox", "zonotope", "crown-ibp", "deeppoly")
METRICS = ("natural", "certified", "adversarial")
# settings that change where or how fast the experiment runs, not what it measures
NOT_COMPARED = ("device", "data_root", "download", "pgpe_memory_mib", "population_eval")
# settings added after a saved paradox_config.json may have been written: a saved config
# without them ran with these values
ADDED_DEFAULTS: dict[str, Any] = {
    "complete": False, "milp_time_limit": 30.0,
    "grad_start": "pgd", "grad_init": "ibp", "grad_warmup_epochs": 0, "grad_batches": None,
    "pgd_ramp_epochs": {}, "pgpe_batches": None, "tightness_scope": "all",
}


class ParadoxError(AbsdslError):
    """Bad input to ``absdsl paradox``: preset, domain, optimizer, eps, or output folder."""


# ---- models of the presets ----------------------------------------------------------------
def _fc(info: DatasetInfo, widths: tuple[int, ...]) -> nn.Sequential:
    from .models import Normalize

    c, h, w = info.shape
    layers: list[nn.Module] = [Normalize(info.mean, info.std), nn.Flatten()]
    sizes = (c * h * w, *widths)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], info.num_classes))
    return nn.Sequential(*layers)


def quick_fc(info: DatasetInfo) -> nn.Sequential:
    """784-32-32-10 ReLU network of the ``quick-mlp`` preset (the quick preset before CNN3's
    tight domains were cheap enough): every run fine-tunes from the PGD start."""
    return _fc(info, (32, 32))


def micro_fc(info: DatasetInfo) -> nn.Sequential:
    """784-16-10: the test preset's network (seconds per run)."""
    return _fc(info, (16,))


# ---- configuration ------------------------------------------------------------------------
@dataclass
class ParadoxConfig:
    """Everything that determines the experiment (one file: OUT/paradox_config.json)."""

    preset: str
    dataset: str
    model: str
    eps: list[float]
    domains: list[str]
    optimizers: list[str]
    batch_size: int  # PGD and GRAD
    pgd_epochs: int
    pgd_lr: float
    pgd_steps: int  # PGD steps for the training points of the start
    grad_epochs: int
    grad_lr: float
    grad_milestones: list[int]
    grad_decay: float
    grad_ramp_epochs: dict[str, int]  # per eps (as text): epochs of the eps ramp
    pgpe_epochs: int
    pgpe_lr: float
    pgpe_milestones: list[int]
    pgpe_decay: float
    pgpe_ramp_epochs: dict[str, int]
    pgpe_batch_size: int
    popsize: int
    sigma: float
    train_subset: int | None  # None: the whole training split
    test_subset: int | None  # certification inputs (the same for every network)
    tightness_subset: int  # inputs of the tightness curves (the first of the test split)
    tightness_eps_max: float  # the curve runs over [0, factor * eps]
    tightness_n_eps: int
    eval_pgd_steps: int
    eval_pgd_restarts: int
    tolerance: float = 1e-6
    grad_start: str = "scratch"  # "scratch" (the paper's GRAD) or "pgd" (fine-tune the start)
    grad_init: str = "default"  # TrainConfig.init from scratch: torch's Kaiming uniform
    grad_warmup_epochs: int = 0  # natural epochs (eps 0) before GRAD's ramp
    grad_batches: int | None = None  # batches per epoch (None: the whole training split)
    pgd_ramp_epochs: dict[str, int] = field(default_factory=dict)  # per eps: PGD start ramp
    pgpe_batches: int | None = None
    rgs_epochs: int = 1
    rgs_lr: float = 1e-3
    rgs_milestones: list[int] = field(default_factory=list)
    rgs_decay: float = 1.0
    rgs_ramp_epochs: dict[str, int] = field(default_factory=dict)
    rgs_batch_size: int = 64
    rgs_samples: int = 4  # perturbed weight vectors per RGS step (antithetic pairs)
    rgs_batches: int | None = None
    tightness_scope: str = "own"  # "own": each domain on the start and its own networks
    complete: bool = False  # add the exact MILP stage (HiGHS) to the certification cascade
    milp_time_limit: float = 30.0  # seconds per input for the MILP stage
    seed: int = 0
    device: str = "cpu"
    pgpe_memory_mib: float | None = None  # PGPE's memory_budget_mib (None: its default)
    # how PGPE and RGS evaluate a population: "auto" (measured), "vmap", or "loop" (member
    # by member, no vmapped memory probe: for a domain whose program does not vmap)
    population_eval: str = "auto"
    data_root: str | None = None
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def compared(self) -> dict[str, Any]:
        """The part of the config two runs of the same experiment must agree on."""
        return compared_settings(self.to_dict())


def compared_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Settings without those of NOT_COMPARED and of optimisers the experiment does not run."""
    skipped = {name for opt, names in STAGE_FIELDS.items()
               if opt not in values.get("optimizers", OPTIMIZERS) for name in names}
    return {k: v for k, v in values.items() if k not in NOT_COMPARED and k not in skipped}


# Paper (004, section 4.1 and appendix B): full MNIST, CNN3, eps 0.1 and 0.3; GRAD from scratch
# (Kaiming uniform), 70 epochs, lr 5e-5, decay 0.2 after 50 and 60, 20 ramp epochs; PGPE
# from a PGD start, 150 epochs, batch 512, lr 3e-4, decay 0.4 after 110 and 130, popsize
# 256, sigma 1e-3, a 50-epoch ramp only at eps 0.3. (The paper has no RGS; its settings here
# are PGPE's, with 16 samples.)
_PAPER_SMOOTHING: dict[str, Any] = dict(
    pgpe_epochs=150, pgpe_lr=3e-4, pgpe_milestones=[110, 130], pgpe_decay=0.4,
    pgpe_ramp_epochs={"0.1": 0, "0.3": 50}, pgpe_batch_size=512, popsize=256, sigma=1e-3,
    rgs_epochs=150, rgs_lr=3e-4, rgs_milestones=[110, 130], rgs_decay=0.4,
    rgs_ramp_epochs={"0.1": 0, "0.3": 50}, rgs_batch_size=512, rgs_samples=16,
)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        dataset="mnist", model="cnn3", eps=[0.1, 0.3],
        domains=["box", "hbox", "crown-ibp", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=256, pgd_epochs=70, pgd_lr=5e-4, pgd_steps=8,
        grad_epochs=70, grad_lr=5e-5, grad_milestones=[50, 60], grad_decay=0.2,
        grad_ramp_epochs={"0.1": 20, "0.3": 20}, grad_start="scratch", grad_init="default",
        **_PAPER_SMOOTHING,
        train_subset=None, test_subset=None, tightness_subset=1000, tightness_eps_max=2.0,
        tightness_n_eps=11, eval_pgd_steps=50, eval_pgd_restarts=5, tightness_scope="all",
    ),
    # The paper's protocol at reduced scale: CNN3 on mnist5k, both eps, GRAD from scratch,
    # PGPE and RGS from a shared PGD start. The budget (epochs, batches, popsize, digits) is
    # sized from measured per-step costs so that the whole preset takes at most 30 minutes
    # on 2 idle CPU cores once one CNN3 epoch costs Box <= 2.5x, CROWN-IBP <= 10x, DeepPoly
    # <= 30x, HBox <= 50x a standard epoch (docs/paradox.md: the budget and its arithmetic).
    "quick": dict(
        dataset="mnist5k", model="cnn3", eps=[0.1, 0.3],
        domains=["box", "hbox", "crown-ibp", "deeppoly"], optimizers=["grad", "pgpe", "rgs"],
        batch_size=64, pgd_epochs=8, pgd_lr=2e-3, pgd_steps=5,
        pgd_ramp_epochs={"0.1": 2, "0.3": 4},
        grad_epochs=6, grad_lr=2e-3, grad_milestones=[5], grad_decay=0.2,
        grad_ramp_epochs={"0.1": 2, "0.3": 2}, grad_start="scratch", grad_init="default",
        pgpe_epochs=1, pgpe_lr=5e-4, pgpe_milestones=[], pgpe_decay=1.0, pgpe_ramp_epochs={},
        pgpe_batch_size=64, popsize=16, sigma=1e-3, pgpe_batches=32,
        rgs_epochs=1, rgs_lr=5e-4, rgs_milestones=[], rgs_decay=1.0, rgs_ramp_epochs={},
        rgs_batch_size=64, rgs_samples=4, rgs_batches=32,
        train_subset=None, test_subset=200, tightness_subset=100, tightness_eps_max=2.0,
        tightness_n_eps=4, eval_pgd_steps=20, eval_pgd_restarts=2, tightness_scope="own",
        pgpe_memory_mib=2048.0,
    ),
    # the quick preset before CNN3 (kept as it was measured): a 784-32-32-10 network, eps 0.1,
    # every run fine-tuned from the PGD start
    "quick-mlp": dict(
        dataset="mnist5k", model="absdsl.training.paradox:quick_fc", eps=[0.1],
        domains=["box", "hbox", "crown-ibp", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=64, pgd_epochs=3, pgd_lr=1e-3, pgd_steps=5,
        grad_epochs=2, grad_lr=5e-4, grad_milestones=[], grad_decay=1.0,
        grad_ramp_epochs={}, grad_start="pgd", grad_init="ibp",
        pgpe_epochs=3, pgpe_lr=1e-3, pgpe_milestones=[],
        pgpe_decay=1.0, pgpe_ramp_epochs={}, pgpe_batch_size=128, popsize=16, sigma=1e-3,
        train_subset=None, test_subset=300, tightness_subset=100, tightness_eps_max=3.0,
        tightness_n_eps=6, eval_pgd_steps=20, eval_pgd_restarts=2, tightness_scope="all",
        pgpe_memory_mib=2048.0,  # one HBox member at batch 128 needs ~760 MiB
    ),
    # the tests' preset: a 784-16-10 network, a few steps per run, GRAD from scratch
    "micro": dict(
        dataset="mnist5k", model="absdsl.training.paradox:micro_fc", eps=[0.1],
        domains=["box", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=32, pgd_epochs=1, pgd_lr=1e-3, pgd_steps=2,
        grad_epochs=1, grad_lr=1e-3, grad_milestones=[], grad_decay=1.0,
        grad_ramp_epochs={}, grad_start="scratch", grad_init="default",
        pgpe_epochs=1, pgpe_lr=1e-3, pgpe_milestones=[],
        pgpe_decay=1.0, pgpe_ramp_epochs={}, pgpe_batch_size=32, popsize=4, sigma=1e-3,
        rgs_epochs=1, rgs_lr=1e-3, rgs_batch_size=32, rgs_samples=2,
        train_subset=64, test_subset=20, tightness_subset=10, tightness_eps_max=2.0,
        tightness_n_eps=2, eval_pgd_steps=2, eval_pgd_restarts=1, tightness_scope="own",
    ),
}
FIELDS = {f.name for f in fields(ParadoxConfig)}


def _parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ParadoxError(f"--{what} needs at least one value (comma separated)")
    return items


def _canonical_domain(name: str) -> str:
    from absdsl import domains as registry

    from .programs import DOMAIN_ALIASES

    key = registry.canonical(name) or name.strip().lower()
    if key not in TABLE_DOMAINS:
        raise ParadoxError(
            f"unknown domain {name!r}; choose from {', '.join(TABLE_DOMAINS)} "
            f"(aliases {', '.join(DOMAIN_ALIASES)})"
        )
    return key


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def eps_key(eps: float) -> str:
    """An eps as text for folder names and JSON keys: 0.1 -> '0.1'."""
    return f"{eps:g}"


def make_config(preset: str, overrides: dict[str, Any] | None = None) -> ParadoxConfig:
    """The preset's settings with ``overrides`` (None values ignored), validated."""
    if preset not in PRESETS:
        raise ParadoxError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))  # a deep copy
    for key, value in (overrides or {}).items():
        if key not in FIELDS:
            raise ParadoxError(f"unknown paradox setting {key!r}")
        if value is not None:
            values[key] = value
    cfg = ParadoxConfig(preset=preset, **values)
    validate(cfg)
    return cfg


def validate(cfg: ParadoxConfig) -> None:
    """Range and name checks with messages naming the setting; no work is done."""
    from .data import dataset_info

    cfg.domains = _unique([_canonical_domain(d) for d in cfg.domains])
    opts = [o.strip().lower() for o in cfg.optimizers]
    for o in opts:
        if o not in OPTIMIZERS:
            raise ParadoxError(f"unknown optimizer {o!r}; choose from {', '.join(OPTIMIZERS)}")
    cfg.optimizers = _unique(opts)
    eps_values: list[float] = []
    for e in cfg.eps:
        try:
            value = float(e)
        except (TypeError, ValueError) as err:
            raise ParadoxError(f"eps {e!r} is not a number") from err
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ParadoxError(f"eps must lie in (0, 1] (pixel units), got {e}")
        eps_values.append(value)
    if not eps_values:
        raise ParadoxError("at least one eps is needed")
    cfg.eps = sorted(set(eps_values))
    try:
        dataset_info(cfg.dataset)
    except AbsdslError as err:
        raise ParadoxError(str(err)) from err
    for name in ("batch_size", "pgd_epochs", "grad_epochs", "pgpe_epochs", "pgpe_batch_size",
                 "rgs_epochs", "rgs_batch_size", "tightness_subset", "eval_pgd_steps",
                 "eval_pgd_restarts", "pgd_steps"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParadoxError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(cfg.grad_warmup_epochs, bool) or not isinstance(cfg.grad_warmup_epochs, int) \
            or cfg.grad_warmup_epochs < 0:
        raise ParadoxError(f"grad_warmup_epochs must be an integer >= 0, "
                           f"got {cfg.grad_warmup_epochs!r}")
    for name in ("grad_batches", "pgpe_batches", "rgs_batches"):
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ParadoxError(f"{name} (batches per epoch) must be an integer >= 1 (or "
                               f"absent: the whole training split), got {value!r}")
    for name in ("pgd_ramp_epochs", "grad_ramp_epochs", "pgpe_ramp_epochs", "rgs_ramp_epochs"):
        value = getattr(cfg, name)
        if not isinstance(value, dict) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in value.values()):
            raise ParadoxError(f"{name} must map eps (as text, e.g. \"0.3\") to an integer "
                               f">= 0 of epochs, got {value!r}")
    for name in ("grad_milestones", "pgpe_milestones", "rgs_milestones"):
        value = getattr(cfg, name)
        if not isinstance(value, list) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value):
            raise ParadoxError(f"{name} must be a list of epochs >= 1, got {value!r}")
    for name in ("grad_decay", "pgpe_decay", "rgs_decay"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and not isinstance(value, bool)
                and math.isfinite(value) and 0 < value <= 1):
            raise ParadoxError(f"{name} must lie in (0, 1], got {value!r}")
    if cfg.grad_start not in GRAD_STARTS:
        raise ParadoxError(f"grad_start must be one of {', '.join(GRAD_STARTS)} (scratch: the "
                           f"paper's GRAD; pgd: fine-tune the PGD start), got {cfg.grad_start!r}")
    if cfg.grad_init not in ("default", "ibp"):
        raise ParadoxError(f"grad_init must be 'default' (torch's Kaiming uniform) or 'ibp' "
                           f"(Shi et al.), got {cfg.grad_init!r}")
    if cfg.population_eval not in ("auto", "vmap", "loop"):
        raise ParadoxError(f"population_eval must be auto, vmap or loop, "
                           f"got {cfg.population_eval!r}")
    if cfg.tightness_scope not in TIGHTNESS_SCOPES:
        raise ParadoxError(f"tightness_scope must be one of {', '.join(TIGHTNESS_SCOPES)}, "
                           f"got {cfg.tightness_scope!r}")
    if isinstance(cfg.rgs_samples, bool) or not isinstance(cfg.rgs_samples, int) \
            or cfg.rgs_samples < 2 or cfg.rgs_samples % 2:
        raise ParadoxError(f"rgs_samples must be an even integer >= 2 (RGS samples +/- "
                           f"pairs), got {cfg.rgs_samples!r}")
    if isinstance(cfg.popsize, bool) or not isinstance(cfg.popsize, int) or cfg.popsize < 2 \
            or cfg.popsize % 2:
        raise ParadoxError(f"popsize must be an even integer >= 2 (PGPE samples +/- pairs), "
                           f"got {cfg.popsize!r}")
    for name in ("train_subset", "test_subset"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ParadoxError(f"{name} must be an integer >= 1 (or absent), got {value!r}")
    for name in ("pgd_lr", "grad_lr", "pgpe_lr", "rgs_lr", "sigma", "tolerance",
                 "tightness_eps_max"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ParadoxError(f"{name} must be a number > 0, got {value!r}")
    if isinstance(cfg.tightness_n_eps, bool) or not isinstance(cfg.tightness_n_eps, int) \
            or cfg.tightness_n_eps < 2:
        raise ParadoxError(f"tightness_n_eps must be >= 2, got {cfg.tightness_n_eps}")
    if not isinstance(cfg.complete, bool):
        raise ParadoxError(f"complete must be true or false, got {cfg.complete!r}")
    from .milp import MilpError, check_time_limit

    try:
        check_time_limit(cfg.milp_time_limit)
    except MilpError as err:
        raise ParadoxError(str(err)) from err
    if max(cfg.eps) * cfg.tightness_eps_max > 1.0:
        cfg.tightness_eps_max = 1.0 / max(cfg.eps)  # the curve stops at eps 1


def check_data_available(cfg: ParadoxConfig) -> None:
    """Full data sets come from a data root: fail now, naming what is missing."""
    if cfg.dataset == "mnist5k":
        return
    root = Path(cfg.data_root) if cfg.data_root else Path("data")
    if cfg.download:
        return
    raw = root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}.get(cfg.dataset, "") / "raw"
    if cfg.dataset == "cifar10":
        raw = root / "cifar-10-batches-py"
    if not raw.is_dir():
        raise ParadoxError(
            f"preset {cfg.preset!r} needs the full {cfg.dataset} data set, which is not on this "
            f"machine (no folder {raw}); pass --data-root DIR holding it, or --download where "
            f"the machine is online (torchvision's layout), or use --preset quick (mnist5k)"
        )


# ---- the plan: which runs, with which training configs ------------------------------------
@dataclass
class RunSpec:
    """One training run of the experiment."""

    name: str  # folder name under OUT/runs (with an eps prefix when several eps are run)
    eps: float
    optimizer: str  # "pgd" for the shared start
    domain: str | None
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields

    @property
    def is_start(self) -> bool:
        return self.optimizer == "pgd"


def run_name(eps: float, optimizer: str, domain: str | None, several_eps: bool) -> str:
    base = "pgd" if optimizer == "pgd" else f"{optimizer}-{domain}"
    return f"eps{eps_key(eps)}/{base}" if several_eps else base


def _train_subset(whole: int | None, batches: int | None, batch_size: int) -> int | None:
    """Examples per epoch: ``batches`` batches (the first of the split), within ``whole``."""
    if batches is None:
        return whole
    n = batches * batch_size
    return n if whole is None else min(whole, n)


def plan(cfg: ParadoxConfig) -> list[RunSpec]:
    """The PGD start and the trainings, per eps, in the order they run."""
    several = len(cfg.eps) > 1
    common: dict[str, Any] = dict(
        dataset=cfg.dataset, data_root=cfg.data_root, download=cfg.download, model=cfg.model,
        seed=cfg.seed, device=cfg.device,
        eval_every=0, tolerance=cfg.tolerance,
        eval_pgd_steps=cfg.eval_pgd_steps, eval_pgd_restarts=cfg.eval_pgd_restarts,
        warmup_epochs=0, grad_clip=10.0, kappa=0.0,
        beta_start=1.0, beta_end=1.0,  # CROWN-IBP as itself ("CROWN-IBP (R)")
    )
    out: list[RunSpec] = []
    for eps in cfg.eps:
        key = eps_key(eps)
        start: dict[str, Any] = dict(
            common, method="pgd", optimizer="grad", domain="box", eps=eps,
            epochs=cfg.pgd_epochs, lr=cfg.pgd_lr, batch_size=cfg.batch_size,
            train_subset=cfg.train_subset, lr_milestones=[], lr_decay=1.0,
            ramp_epochs=int(cfg.pgd_ramp_epochs.get(key, 0)), pgd_steps=cfg.pgd_steps)
        out.append(RunSpec(run_name(eps, "pgd", None, several), eps, "pgd", None, start))
        for opt in cfg.optimizers:
            for domain in cfg.domains:
                if opt == "grad":
                    o = dict(common, method="certified", optimizer="grad", domain=domain,
                             eps=eps, epochs=cfg.grad_epochs, lr=cfg.grad_lr,
                             batch_size=cfg.batch_size, lr_milestones=list(cfg.grad_milestones),
                             lr_decay=cfg.grad_decay,
                             train_subset=_train_subset(cfg.train_subset, cfg.grad_batches,
                                                        cfg.batch_size),
                             ramp_epochs=int(cfg.grad_ramp_epochs.get(key, 0)))
                    if cfg.grad_start == "scratch":  # (a fine-tuning keeps the old config)
                        o.update(init=cfg.grad_init, warmup_epochs=cfg.grad_warmup_epochs)
                elif opt == "pgpe":
                    o = dict(common, method="certified", optimizer="pgpe", domain=domain,
                             eps=eps, epochs=cfg.pgpe_epochs, lr=cfg.pgpe_lr,
                             batch_size=cfg.pgpe_batch_size,
                             train_subset=_train_subset(cfg.train_subset, cfg.pgpe_batches,
                                                        cfg.pgpe_batch_size),
                             lr_milestones=list(cfg.pgpe_milestones), lr_decay=cfg.pgpe_decay,
                             ramp_epochs=int(cfg.pgpe_ramp_epochs.get(key, 0)),
                             options={"popsize": cfg.popsize, "sigma": cfg.sigma})
                else:
                    o = dict(common, method="certified", optimizer="rgs", domain=domain,
                             eps=eps, epochs=cfg.rgs_epochs, lr=cfg.rgs_lr,
                             batch_size=cfg.rgs_batch_size,
                             train_subset=_train_subset(cfg.train_subset, cfg.rgs_batches,
                                                        cfg.rgs_batch_size),
                             lr_milestones=list(cfg.rgs_milestones), lr_decay=cfg.rgs_decay,
                             ramp_epochs=int(cfg.rgs_ramp_epochs.get(key, 0)),
                             options={"rgs_samples": cfg.rgs_samples, "sigma": cfg.sigma})
                if opt in SMOOTHERS and cfg.pgpe_memory_mib is not None:
                    o["options"]["memory_budget_mib"] = float(cfg.pgpe_memory_mib)
                if opt in SMOOTHERS and cfg.population_eval != "auto":
                    o["options"]["population_eval"] = cfg.population_eval
                    if cfg.population_eval == "loop":
                        o["options"]["chunk_size"] = 1
                out.append(RunSpec(run_name(eps, opt, domain, several), eps, opt, domain, o))
    return out


def start_of(spec: RunSpec, cfg: ParadoxConfig) -> str | None:
    """The name of the run a run starts from (None: from scratch)."""
    if spec.is_start or (spec.optimizer == "grad" and cfg.grad_start == "scratch"):
        return None
    return run_name(spec.eps, "pgd", None, len(cfg.eps) > 1)


def train_config(spec: RunSpec, init_checkpoint: Path | None = None) -> Any:
    """The resolved TrainConfig of a run (PGPE's and RGS's start goes in as
    ``init_checkpoint``)."""
    from .config import resolve

    overrides = json.loads(json.dumps(spec.overrides))
    if spec.optimizer in SMOOTHERS and init_checkpoint is not None:
        overrides["options"] = dict(overrides["options"], init_checkpoint=str(init_checkpoint))
    return resolve(overrides)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict without what may differ between resumes of the same run."""
    out = {k: v for k, v in cfg_dict.items() if k not in NOT_COMPARED}
    options = dict(out.get("options") or {})
    options.pop("init_checkpoint", None)  # the start is compared by its hash instead
    for key in ("memory_budget_mib", "population_eval", "chunk_size"):
        options.pop(key, None)  # chunking changes speed, not results
    out["options"] = options
    return json.loads(json.dumps(out))


# ---- files --------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Any) -> None:
    from .checkpoint import atomic_write_text

    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def final_checkpoint(run_dir: Path, epochs: int) -> Path:
    from .checkpoint import checkpoint_name

    return run_dir / "checkpoints" / checkpoint_name(epochs)


def prepare_out(out: Path, cfg: ParadoxConfig, overwrite: bool) -> None:
    """Refuse an OUT holding another experiment (or foreign files) unless --overwrite."""
    saved_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ParadoxError(f"--out {out} exists and is not a folder")
    if saved_path.is_file():
        saved = _read_json(saved_path)
        if saved is None or saved.get("format") != FORMAT:
            raise ParadoxError(f"{saved_path} is not a readable paradox configuration; "
                               "remove it or choose another --out")
        old = dict(saved.get("config", {}))
        for key, value in ADDED_DEFAULTS.items():
            old.setdefault(key, value)
        old = compared_settings(old)
        if old != cfg.compared():
            if not overwrite:
                diff = sorted(k for k in set(old) | set(cfg.compared())
                              if old.get(k) != cfg.compared().get(k))
                raise ParadoxError(
                    f"{out} holds a paradox run with a different configuration (differs in: "
                    f"{', '.join(diff)}); pass --overwrite to start over there, or choose "
                    "another --out"
                )
            _clear_out(out)
    elif out.is_dir() and any(out.iterdir()):
        raise ParadoxError(f"--out {out} is not empty and holds no paradox run "
                           f"(no {CONFIG_FILE}); choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(saved_path, {"format": FORMAT, "version": VERSION, "config": cfg.to_dict()})


def _clear_out(out: Path) -> None:
    """--overwrite: remove what this command wrote (runs, results), nothing else."""
    shutil.rmtree(out / "runs", ignore_errors=True)
    for name in (CONFIG_FILE, "paradox.json", "paradox.png", "paradox.txt"):
        (out / name).unlink(missing_ok=True)


# ---- running ------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    spec: RunSpec
    run_dir: Path
    checkpoint: Path
    sha256: str
    status: str  # trained | resumed | skipped
    wall_seconds: float
    train_seconds: float


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def ensure_run(spec: RunSpec, out: Path, start: RunOutcome | None, *, quiet: bool,
               progress: bool) -> RunOutcome:
    """Train, resume or skip one run; returns where its final checkpoint is."""
    from .checkpoint import list_checkpoints
    from .config import load_toml, resolve
    from .loop import run_training

    run_dir = out / "runs" / spec.name
    init = start.checkpoint if start is not None else None
    cfg = train_config(spec, init)
    expected = _comparable(cfg.to_dict())
    init_sha = start.sha256 if start is not None else None
    final = final_checkpoint(run_dir, int(cfg.epochs or 0))
    marker = _read_json(run_dir / RUN_MARKER)
    wall = time.perf_counter()

    if (marker is not None and marker.get("finished") and marker.get("config") == expected
            and marker.get("init_sha256") == init_sha and final.is_file()):
        _log(quiet, f"  {spec.name}: finished earlier, skipped")
        return RunOutcome(spec, run_dir, final, file_sha256(final), "skipped", 0.0,
                          float(marker.get("train_seconds", 0.0)))

    resumable = False
    if list_checkpoints(run_dir) and (run_dir / "config.toml").is_file():
        try:
            saved = _comparable(resolve(load_toml(run_dir / "config.toml")).to_dict())
        except AbsdslError:
            saved = None
        same_start = marker is None or marker.get("init_sha256") == init_sha
        resumable = saved == expected and same_start
    if resumable:
        _log(quiet, f"  {spec.name}: resuming from {run_dir / 'checkpoints'}")
        status = "resumed"
        result = _train(lambda: run_training(None, run_dir, resume=True, progress=progress,
                                             final_eval=False), run_dir, out)
    else:
        _log(quiet, f"  {spec.name}: training ({cfg.method}, {cfg.optimizer}, "
                    f"{cfg.domain if cfg.method != 'pgd' else 'PGD'}, eps {cfg.eps:g}, "
                    f"{cfg.epochs} epochs)")
        status = "trained"
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_MARKER, {"finished": False, "config": expected,
                                           "init_sha256": init_sha})
        if spec.optimizer == "grad" and init is not None:
            seed_from_start(cfg, run_dir, init)
            result = _train(lambda: run_training(None, run_dir, resume=True, progress=progress,
                                                 final_eval=False), run_dir, out)
        else:
            result = _train(lambda: run_training(cfg, run_dir, overwrite=True,
                                                 progress=progress, final_eval=False),
                            run_dir, out)
    if not final.is_file():
        raise ParadoxError(f"run {run_dir} ended without its final checkpoint {final.name}")
    seconds = float(result.get("train_seconds", 0.0))
    _write_json(run_dir / RUN_MARKER, {"finished": True, "config": expected,
                                       "init_sha256": init_sha, "checkpoint": final.name,
                                       "train_seconds": seconds})
    elapsed = time.perf_counter() - wall
    _log(quiet, f"  {spec.name}: {status} in {elapsed:.1f} s")
    return RunOutcome(spec, run_dir, final, file_sha256(final), status, elapsed, seconds)


def _train(fn: Any, run_dir: Path, out: Path) -> dict[str, Any]:
    from .loop import Interrupted

    try:
        return fn()
    except Interrupted as err:
        raise ParadoxError(
            f"stopped in {run_dir} (checkpoint saved); run the same absdsl paradox command "
            f"(--out {out}) again to resume"
        ) from err


def seed_from_start(cfg: Any, run_dir: Path, init: Path) -> None:
    """Write RUN/checkpoints/epoch_0000.pt: the fresh run's state with the start's weights.

    GRAD fine-tuning then starts from the PGD checkpoint through the loop's ordinary resume
    (PGPE takes the start as its ``init_checkpoint`` option instead).
    """
    from .checkpoint import CheckpointError, load_checkpoint
    from .loop import Trainer, prepare_run_dir

    prepare_run_dir(run_dir, cfg, overwrite=True)
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.setup(None)
    try:
        trainer.model.load_state_dict(load_checkpoint(init)["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the start {init} does not fit model {cfg.model!r}: {err}") from err
    trainer.save()
    close = getattr(trainer, "close", None)
    if callable(close):
        close()


def spread_subset(split: Any, n: int | None) -> Any:
    """n examples spread evenly over the split, the same for every network (balanced for a
    split in any order, not only the class-interleaved mnist5k splits)."""
    from .data import Split

    if n is None or n >= len(split):
        return split
    idx = torch.linspace(0, len(split) - 1, n).round().long().unique()
    return Split(split.images[idx], split.labels[idx])


def load_network(run_dir: Path, checkpoint: Path) -> tuple[nn.Module, DatasetInfo]:
    """The trained network of a run, on the CPU in eval mode (weights-only load)."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .data import dataset_info
    from .models import build_model

    ckpt = load_checkpoint(checkpoint)
    info = dataset_info(ckpt["config"]["dataset"])
    model = build_model(ckpt["config"]["model"], info)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: weights do not fit model "
                              f"{ckpt['config']['model']!r}: {err}") from err
    return model.cpu().eval(), info


def check_domains(cfg: ParadoxConfig) -> None:
    """Compile every domain (and, with ``complete``, the MILP encoding) for the model now.

    A domain without a rule for one of the model's ops then fails before the first training
    instead of after the PGD start has been trained and certified.
    """
    from .analysis.tightness import compile_domain, float64_copy
    from .data import dataset_info
    from .models import build_model

    info = dataset_info(cfg.dataset)
    model = float64_copy(build_model(cfg.model, info))
    shape = tuple(info.shape)
    for name in cfg.domains:
        try:
            compile_domain(model, name, shape)
        except AbsdslError as err:
            raise ParadoxError(f"domain {name!r} cannot train or bound model {cfg.model!r}: "
                               f"{str(err).splitlines()[0]}") from err
    if cfg.complete:
        from .milp import NetworkMilp

        try:
            NetworkMilp(model, shape)
        except AbsdslError as err:
            raise ParadoxError(f"--complete: {str(err).splitlines()[0]}") from err


def certify_run(outcome: RunOutcome, cfg: ParadoxConfig, test_split: Any,
                quiet: bool) -> dict[str, Any]:
    """The cascade on the run's network (cached in the run folder by checkpoint hash)."""
    from .certify import CertifyOptions, certify_model

    key: dict[str, Any] = {
        "checkpoint_sha256": outcome.sha256, "eps": outcome.spec.eps, "domain": "tightest",
        "n": len(test_split), "pgd_steps": cfg.eval_pgd_steps,
        "pgd_restarts": cfg.eval_pgd_restarts, "tolerance": cfg.tolerance, "seed": cfg.seed,
        # summaries from before the scaled threshold and PGD on certified inputs are not reused
        "policy": "scaled-threshold+pgd-on-certified"}
    if cfg.complete:  # (without it the key is the one earlier versions wrote)
        key.update(stages=["milp"], milp_time_limit=cfg.milp_time_limit)
    cache = outcome.run_dir / CERTIFY_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["summary"]
    model, info = load_network(outcome.run_dir, outcome.checkpoint)
    if cfg.complete:
        import importlib

        importlib.import_module(f"{__package__}.milp")  # registers the "milp" stage
    opts = CertifyOptions(eps=outcome.spec.eps, domain="tightest", tolerance=cfg.tolerance,
                          pgd_steps=cfg.eval_pgd_steps, pgd_restarts=cfg.eval_pgd_restarts,
                          seed=cfg.seed, extra_stages=["milp"] if cfg.complete else [],
                          milp_time_limit=cfg.milp_time_limit)
    report = certify_model(model, info, test_split, opts)
    summary = report.summary()
    if report.skipped_domains:
        summary["skipped_domains"] = report.skipped_domains
    _write_json(cache, {"key": key, "summary": summary})
    _log(quiet, f"  {outcome.spec.name}: certified {summary['certified_acc']:.3f} "
                f"(natural {summary['natural_acc']:.3f}, adversarial "
                f"{summary['adversarial_acc']:.3f}) in {summary['certify_seconds']:.1f} s")
    return summary


def tightness_domains(spec: RunSpec, cfg: ParadoxConfig) -> list[str]:
    """The domains whose tightness is measured on a run's network."""
    if spec.is_start or cfg.tightness_scope == "all" or spec.domain is None:
        return list(cfg.domains)
    return [spec.domain]


def tightness_run(outcome: RunOutcome, cfg: ParadoxConfig, x: torch.Tensor, y: torch.Tensor,
                  quiet: bool) -> dict[str, Any]:
    """Each domain's certified-accuracy curve and AUC on the run's network (cached).

    With ``tightness_scope = "own"`` a trained network is measured with its own domain only
    (what the table shows); the start is always measured with every domain.
    """
    from .analysis.tightness import certified_auc, propagation_tightness

    eps_max = cfg.tightness_eps_max * outcome.spec.eps
    domains = tightness_domains(outcome.spec, cfg)
    key = {"checkpoint_sha256": outcome.sha256, "domains": domains,
           "eps_max": eps_max, "n_eps": cfg.tightness_n_eps, "n": int(y.shape[0]),
           "tolerance": cfg.tolerance}
    cache = outcome.run_dir / TIGHTNESS_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["result"]
    start = time.perf_counter()
    model, _ = load_network(outcome.run_dir, outcome.checkpoint)
    curves = {}
    for domain in domains:
        res = certified_auc(model, x, y, domain, eps_max, cfg.tightness_n_eps,
                            tolerance=cfg.tolerance)
        curves[domain] = asdict(res)
    try:
        tau: float | None = propagation_tightness(model, x, y, outcome.spec.eps)
        tau_note = "Mao et al. propagation tightness at the run's eps, mean over inputs and margins"
    except AbsdslError as err:
        tau, tau_note = None, f"not available: {str(err).splitlines()[0]}"
    result: dict[str, Any] = {
        "auc": {d: c["auc"] for d, c in curves.items()}, "curves": curves,
        "propagation_tightness": tau, "propagation_tightness_note": tau_note,
        "seconds": time.perf_counter() - start}
    _write_json(cache, {"key": key, "result": result})
    aucs = ", ".join(f"{d} {a:.3f}" for d, a in result["auc"].items())
    _log(quiet, f"  {outcome.spec.name}: tightness AUC {aucs} in {result['seconds']:.1f} s")
    return result


# ---- the table ----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def build_tables(cfg: ParadoxConfig, certs: dict[str, dict[str, Any]],
                 tight: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eps: Table 1's rows (PGD start, then one per domain) and the findings."""
    several = len(cfg.eps) > 1
    tables = []
    for eps in cfg.eps:
        start = run_name(eps, "pgd", None, several)
        rows = []
        pgd_cert = certs[start]
        rows.append({
            "domain": "PGD",
            "grad": {m: pgd_cert[f"{m}_acc"] for m in METRICS}, "pgpe": None,
            "tightness": None,
        })
        for domain in cfg.domains:
            row: dict[str, Any] = {"domain": domain}
            for opt in OPTIMIZERS:
                name = run_name(eps, opt, domain, several)
                row[opt] = ({m: certs[name][f"{m}_acc"] for m in METRICS}
                            if name in certs else None)
                row[f"tightness_{opt}"] = (tight[name]["auc"].get(domain) if name in tight
                                           else None)
            row["tightness"] = tight[start]["auc"][domain]  # on the shared PGD start
            rows.append(row)
        prefix = f"eps{eps_key(eps)}/" if several else ""
        networks = {name: {"auc": t["auc"],
                           "propagation_tightness": t["propagation_tightness"]}
                    for name, t in tight.items() if name.startswith(prefix)}
        tables.append({"eps": eps, "rows": rows, "tightness_by_network": networks,
                       "findings": findings([r for r in rows if r["domain"] != "PGD"],
                                            int(pgd_cert.get("n", 0)) or None)})
    return tables


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None if either side is constant."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def _above(by: dict[str, float], a: str, b: list[str], n: int | None) -> dict[str, Any] | None:
    """Is ``a``'s certified accuracy above every domain of ``b``? With the smallest gap, in
    points, and whether that gap is within two standard errors of a difference of two
    accuracies on ``n`` test inputs (the same inputs, so this is conservative)."""
    others = [d for d in b if d in by and d != a]
    if a not in by or not others:
        return None
    gap = min(by[a] - by[d] for d in others)
    out: dict[str, Any] = {"holds": bool(gap > 0), "gap_points": 100 * gap}
    if n:
        worst = max(others, key=lambda d: by[d])
        se = math.sqrt((by[a] * (1 - by[a]) + by[worst] * (1 - by[worst])) / n)
        out["two_se_points"] = 200 * se
        out["within_noise"] = bool(abs(gap) <= 2 * se)
    return out


# the paper's orderings (section 4.1): name -> (optimiser, the domain that should be above,
# the domains it should be above)
PAPER_ORDERINGS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "IBP best under GRAD": ("grad", "box", ("hbox", "zonotope", "crown-ibp", "deeppoly")),
    "DeepPoly above IBP under PGPE": ("pgpe", "deeppoly", ("box",)),
    "DeepPoly above IBP under RGS": ("rgs", "deeppoly", ("box",)),
}


def findings(rows: list[dict[str, Any]], n: int | None = None) -> dict[str, Any]:
    """Does the paradox (GRAD: tighter trains worse) and its reversal (smoothing) show here?

    Measured as the rank correlation between a domain's tightness on the shared start and
    the certified accuracy it trains to: negative under GRAD is the paradox, positive under
    PGPE (or RGS) the reversal; also whether the loosest domain beats the tightest under
    each, and the paper's two orderings (IBP best under GRAD; DeepPoly above IBP under
    smoothing) with their gaps against the noise of ``n`` test inputs.
    """
    out: dict[str, Any] = {}
    tight = [r["tightness"] for r in rows]
    loosest = rows[min(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    tightest = rows[max(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    out["loosest_domain"], out["tightest_domain"] = loosest, tightest
    certified: dict[str, dict[str, float]] = {}
    for opt in OPTIMIZERS:
        have = [r for r in rows if r.get(opt) is not None]
        certified[opt] = {r["domain"]: r[opt]["certified"] for r in have}
        if len(have) < 2:
            continue
        cert = [r[opt]["certified"] for r in have]
        rho = _spearman([r["tightness"] for r in have], cert)
        by = certified[opt]
        out[opt] = {
            "rank_correlation_tightness_vs_certified": rho,
            "loosest_minus_tightest_certified": (
                by[loosest] - by[tightest] if loosest in by and tightest in by else None),
            "best_domain": max(by, key=lambda d: by[d]),
        }

    def signed(opt: str, positive: bool) -> bool | None:
        f = out.get(opt)
        rho = None if f is None else f["rank_correlation_tightness_vs_certified"]
        return None if rho is None else bool(rho > 0 if positive else rho < 0)

    out["paradox_under_grad"] = signed("grad", False)
    out["reversal_under_pgpe"] = signed("pgpe", True)
    out["reversal_under_rgs"] = signed("rgs", True)
    orderings = {}
    for name, (opt, above, below) in PAPER_ORDERINGS.items():
        result = _above(certified.get(opt, {}), above, list(below), n)
        if result is not None:
            orderings[name] = result
    out["paper_orderings"] = orderings
    return out


DOMAIN_NAMES = {"box": "IBP (box)", "hbox": "HBox", "zonotope": "Zonotope",
                "crown-ibp": "CROWN-IBP", "deeppoly": "DeepPoly"}


def table_optimizers(tables: list[dict[str, Any]]) -> list[str]:
    """The optimisers with at least one trained row (the columns the table shows)."""
    return [o for o in OPTIMIZERS
            if any(r.get(o) for t in tables for r in t["rows"] if r["domain"] != "PGD")] \
        or ["grad"]


def format_tables(tables: list[dict[str, Any]], dataset: str) -> str:
    """The paper's Table 1 layout as text (accuracies in %, tightness as AUC)."""
    opts = table_optimizers(tables)
    w = 8 * len(opts)
    lines: list[str] = []
    head1 = (f"{'Dataset':<10}{'eps':<6}{'Relaxation':<12}{'Nat. Acc. [%]':^{w}}"
             f"{'Cert. Acc. [%]':^{w}}{'Adv. Acc. [%]':^{w}}{'Tightness (AUC)':^{w + 8}}")
    head2 = (f"{'':<28}" + "".join(f"{o.upper():>8}" for o in opts) * 3
             + f"{'start':>8}" + "".join(f"{o.upper():>8}" for o in opts))
    lines += [head1, head2, "-" * len(head2)]
    for t in tables:
        for i, r in enumerate(t["rows"]):
            name = DOMAIN_NAMES.get(r["domain"], r["domain"])
            cells = []
            for m in METRICS:
                for opt in opts:
                    cells.append(_pct(r[opt][m]) if r.get(opt) else "-")
            tights = [r.get("tightness")] + [r.get(f"tightness_{o}") for o in opts]
            tcells = ["-" if v is None else f"{v:.3f}" for v in tights]
            lines.append(f"{dataset if i == 0 else '':<10}"
                         f"{eps_key(t['eps']) if i == 0 else '':<6}{name:<12}"
                         + "".join(f"{c:>8}" for c in cells)
                         + "".join(f"{c:>8}" for c in tcells))
        f = t["findings"]
        for opt, what in (("grad", "paradox_under_grad"), ("pgpe", "reversal_under_pgpe"),
                          ("rgs", "reversal_under_rgs")):
            if opt in f:
                rho = f[opt]["rank_correlation_tightness_vs_certified"]
                rho_s = "n/a" if rho is None else f"{rho:+.2f}"
                lines.append(f"  {opt.upper()}: rank corr(tightness, certified) = {rho_s}; "
                             f"best {f[opt]['best_domain']}; {what.replace('_', ' ')}: "
                             f"{f.get(what)}")
        for name, res in f.get("paper_orderings", {}).items():
            noise = ""
            if "two_se_points" in res:
                noise = (f"; 2 s.e. {res['two_se_points']:.1f} points"
                         + (", within noise" if res["within_noise"] else ""))
            lines.append(f"  paper: {name}: {'yes' if res['holds'] else 'no'} "
                         f"(gap {res['gap_points']:+.1f} points{noise})")
        lines.append("")
    lines.append("Tightness: AUC of the domain's certified accuracy over eps in [0, eps_max] "
                 "divided by eps_max; 'start' on the shared PGD network, the other columns on "
                 "the network the domain trained.")
    return "\n".join(lines)


def plot(tables: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars per eps: natural / certified / adversarial (GRAD vs PGPE) and tightness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tables)
    fig, axes = plt.subplots(n, 4, figsize=(16, 3.6 * n), squeeze=False)
    colors = {"grad": "#4c72b0", "pgpe": "#dd8452", "rgs": "#8172b3"}
    opts = table_optimizers(tables)
    width = 0.8 / len(opts)
    for row_axes, t in zip(axes, tables, strict=True):
        rows = [r for r in t["rows"] if r["domain"] != "PGD"]
        pgd = t["rows"][0]["grad"]
        names = [r["domain"] for r in rows]
        xs = list(range(len(rows)))
        for ax, m in zip(row_axes[:3], METRICS, strict=True):
            for k, opt in enumerate(opts):
                vals = [100 * r[opt][m] if r.get(opt) else 0.0 for r in rows]
                ax.bar([x + (k - (len(opts) - 1) / 2) * width for x in xs], vals, width=width,
                       color=colors[opt], label=opt.upper())
            ax.axhline(100 * pgd[m], color="k", ls="--", lw=1, label="PGD start")
            ax.set_xticks(xs, names)
            ax.set_title(f"{m} accuracy, eps {eps_key(t['eps'])}")
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
        ax = row_axes[3]
        ax.bar(xs, [r["tightness"] for r in rows], color="#55a868")
        ax.set_xticks(xs, names)
        ax.set_title("tightness on the PGD start (AUC)")
        ax.set_ylim(0, 1)
        row_axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- estimate -----------------------------------------------------------------------------
def _time_run(spec: RunSpec, steps: int) -> dict[str, Any]:
    """Set-up seconds, seconds per step (``steps`` timed after one untimed, at the target eps,
    from fresh weights) and the number of steps of one run."""
    import tempfile

    from .data import train_batches
    from .loop import Trainer
    from .steprule import TrainBatch

    cfg = train_config(spec, None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp), progress=False)
        trainer.setup(None)
        setup = time.perf_counter() - t0
        try:
            total = trainer.steps_per_epoch * int(cfg.epochs or 0)
            batches = list(train_batches(trainer.train_split, int(cfg.batch_size or 1),
                                         cfg.seed, 0))
            eps = float(cfg.train_eps if cfg.train_eps is not None else cfg.eps)
            times = []
            for i in range(steps + 1):
                x, y, n = batches[i % len(batches)]
                t = time.perf_counter()
                trainer.rule.step(TrainBatch(x, y, eps, 0, i, beta=cfg.beta_start,
                                             kappa=float(cfg.kappa_start or 0.0),
                                             weight=x.shape[0] / n))
                times.append(time.perf_counter() - t)
        finally:
            trainer.close()
    per_step = sum(times[1:]) / steps
    return {"name": spec.name, "setup_seconds": setup, "seconds_per_step": per_step,
            "first_step_seconds": times[0], "steps": total, "batch_size": cfg.batch_size,
            "projected_seconds": setup + times[0] + per_step * max(total - 1, 0)}


def _time_bounds(cfg: ParadoxConfig, eps: float, digits: int) -> dict[str, Any]:
    """Per domain: compile seconds and bound seconds per digit (float64, as the cascade and
    the tightness curves run them), and PGD seconds per digit, on a fresh network."""
    import absdsl
    from absdsl.compiler.specs import margin_spec

    from .attacks import PGDConfig, pgd_attack
    from .data import load_dataset
    from .models import build_model
    from .programs import CASCADE_ORDER

    info, _, test = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    split = spread_subset(test, digits)
    x, y = split.as_float()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, info).eval()
    model64 = model.double()
    x64 = x.double()
    lo, hi = (x64 - eps).clamp(0, 1), (x64 + eps).clamp(0, 1)
    spec = margin_spec(y, info.num_classes).to(torch.float64)
    out: dict[str, Any] = {"digits": int(y.shape[0]), "domains": {}}
    for name in dict.fromkeys([*CASCADE_ORDER, *cfg.domains]):
        t = time.perf_counter()
        prog = absdsl.compile(model64, domain=name, input_shape=tuple(info.shape))
        compiled = time.perf_counter() - t
        with torch.no_grad():
            prog(lo, hi, spec=spec)  # the first call may trace or warm caches
            t = time.perf_counter()
            prog(lo, hi, spec=spec)
        out["domains"][name] = {"compile_seconds": compiled,
                                "seconds_per_digit": (time.perf_counter() - t) / y.shape[0]}
    model32 = model.float()
    t = time.perf_counter()
    pgd_attack(model32, x, y, eps, PGDConfig(steps=cfg.eval_pgd_steps,
                                             restarts=cfg.eval_pgd_restarts),
               generator=torch.Generator().manual_seed(0))
    out["pgd_seconds_per_digit"] = (time.perf_counter() - t) / y.shape[0]
    return out


def estimate(cfg: ParadoxConfig, *, steps: int = 2, digits: int = 32,
             quiet: bool = False) -> dict[str, Any]:
    """Projected wall time of the whole experiment from timed steps of every run.

    Training: each run's set-up, first step and ``steps`` timed steps at the target eps from
    fresh weights, scaled to the run's steps (the eps ramp makes the early steps of the tight
    domains cheaper, PGPE's first generations tune its plan). Certification: an upper bound
    that sends every test digit through every bound stage and PGD. Tightness: every curve
    point on every digit. A natural step of the same batch size is timed too, so that the
    costs read as ratios on a loaded machine.
    """
    from .programs import CASCADE_ORDER

    check_data_available(cfg)
    check_domains(cfg)
    wall = time.perf_counter()
    load_start = machine()["load_average"]
    standard_spec = RunSpec("standard", cfg.eps[0], "grad", None, dict(
        plan(cfg)[0].overrides, method="natural", epochs=1))
    standard = _time_run(standard_spec, steps)
    rows = []
    for spec in plan(cfg):
        row = _time_run(spec, steps)
        row["x_standard_step"] = (row["seconds_per_step"] * standard["batch_size"]
                                  / (standard["seconds_per_step"] * row["batch_size"]))
        rows.append(row)
        _log(quiet, f"  {spec.name}: {row['seconds_per_step']:.3f} s/step x {row['steps']} "
                    f"steps -> {row['projected_seconds']:.0f} s")
    n_test = cfg.test_subset or 10_000
    bounds: dict[str, Any] = {}
    certify: dict[str, float] = {}
    tight: dict[str, float] = {}
    for eps in cfg.eps:
        b = _time_bounds(cfg, eps, min(digits, n_test))
        bounds[eps_key(eps)] = b
        doms = b["domains"]
        certify[eps_key(eps)] = sum(
            doms[d]["compile_seconds"] + n_test * doms[d]["seconds_per_digit"]
            for d in CASCADE_ORDER) + n_test * b["pgd_seconds_per_digit"]
        for spec in plan(cfg):
            if spec.eps != eps:
                continue
            tight[spec.name] = sum(
                doms[d]["compile_seconds"] + cfg.tightness_n_eps * cfg.tightness_subset
                * doms[d]["seconds_per_digit"] for d in tightness_domains(spec, cfg))
    train_total = sum(r["projected_seconds"] for r in rows)
    certify_total = sum(certify[eps_key(spec.eps)] for spec in plan(cfg))
    tight_total = sum(tight.values())
    return {
        "config": cfg.to_dict(), "standard_step": standard, "runs": rows,
        "bounds": bounds, "certify_seconds_per_network": certify,
        "tightness_seconds": tight,
        "projected_seconds": {"train": train_total, "certify": certify_total,
                              "tightness": tight_total,
                              "total": train_total + certify_total + tight_total},
        "estimate_wall_seconds": time.perf_counter() - wall,
        "load_average": {"start": load_start, "end": machine()["load_average"]},
    }


def format_estimate(est: dict[str, Any]) -> str:
    """The estimate as a table: per run, then the totals."""
    cfg = est["config"]
    std = est["standard_step"]
    lines = [f"absdsl paradox --estimate: preset {cfg['preset']}, {cfg['dataset']}, "
             f"{cfg['model']}; a natural step (batch {std['batch_size']}) took "
             f"{std['seconds_per_step']:.4f} s; load average {est['load_average']['start']}",
             f"{'run':<28}{'s/step':>9}{'x nat.':>8}{'steps':>7}{'setup s':>9}{'proj. s':>9}"]
    for r in est["runs"]:
        lines.append(f"{r['name']:<28}{r['seconds_per_step']:>9.3f}{r['x_standard_step']:>8.1f}"
                     f"{r['steps']:>7}{r['setup_seconds']:>9.1f}{r['projected_seconds']:>9.0f}")
    for key, b in est["bounds"].items():
        cells = ", ".join(f"{d} {v['seconds_per_digit'] * 1e3:.1f} ms" for d, v in
                          b["domains"].items())
        lines.append(f"eps {key}: float64 bounds per digit: {cells}; PGD "
                     f"{b['pgd_seconds_per_digit'] * 1e3:.1f} ms; certification <= "
                     f"{est['certify_seconds_per_network'][key]:.0f} s per network")
    t = est["projected_seconds"]
    lines.append(f"projected: training {t['train']:.0f} s + certification <= {t['certify']:.0f}"
                 f" s + tightness {t['tightness']:.0f} s = {t['total']:.0f} s "
                 f"({t['total'] / 60:.1f} min); the estimate took "
                 f"{est['estimate_wall_seconds']:.0f} s")
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": load}


def experiment(cfg: ParadoxConfig, out: Path, *, overwrite: bool = False, quiet: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out``; returns what paradox.json holds."""
    from .data import load_dataset

    check_data_available(cfg)
    specs = plan(cfg)
    for spec in specs:  # every training config is checked before any work
        train_config(spec, Path("start.pt") if spec.optimizer in SMOOTHERS else None)
    check_domains(cfg)
    prepare_out(out, cfg, overwrite)
    wall = time.perf_counter()
    info_start = machine()
    _, _, test = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    test_split = spread_subset(test, cfg.test_subset)
    tight_split = spread_subset(test, cfg.tightness_subset)
    x_t, y_t = tight_split.as_float()

    outcomes: dict[str, RunOutcome] = {}
    certs: dict[str, dict[str, Any]] = {}
    tight: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs):
        _log(quiet, f"[{i + 1}/{len(specs)}] {spec.name}")
        origin = start_of(spec, cfg)
        start = outcomes[origin] if origin is not None else None
        outcome = ensure_run(spec, out, start, quiet=quiet, progress=progress)
        outcomes[spec.name] = outcome
        t0 = time.perf_counter()
        certs[spec.name] = certify_run(outcome, cfg, test_split, quiet)
        t1 = time.perf_counter()
        tight[spec.name] = tightness_run(outcome, cfg, x_t, y_t, quiet)
        t2 = time.perf_counter()
        timings[spec.name] = {"status": outcome.status, "train_wall_seconds": outcome.wall_seconds,
                              "train_seconds": outcome.train_seconds,
                              "certify_wall_seconds": t1 - t0, "tightness_wall_seconds": t2 - t1}
    tables = build_tables(cfg, certs, tight)
    total = time.perf_counter() - wall
    text = format_tables(tables, cfg.dataset)
    result = {
        "format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
        "table_layout": {
            "rows": "domain (PGD: the shared start, under the grad key)",
            "columns": {m: list(cfg.optimizers) for m in METRICS},
            "tightness": "AUC on the PGD start; tightness_<optimizer>: AUC of the domain on "
                         "the network it trained",
            "grad_start": cfg.grad_start,
        },
        "certification": {
            "domain": "tightest", "cascade": "clean -> box, hbox, zonotope, crown-ibp, "
            "deeppoly bounds (float64, margin > tolerance) -> PGD" + (
                f" -> exact MILP (HiGHS, {cfg.milp_time_limit:g} s per input)"
                if cfg.complete else ""),
            "complete": cfg.complete, "eps": cfg.eps,
            "n_test": len(test_split), "tolerance": cfg.tolerance,
        },
        "tightness": {"eps_max_factor": cfg.tightness_eps_max, "n_eps": cfg.tightness_n_eps,
                      "n": int(y_t.shape[0]),
                      "normalisation": _normalisation()},
        "tables": tables,
        "runs": {name: {"certify": certs[name], "tightness": tight[name],
                        "run_dir": str(outcomes[name].run_dir),
                        "checkpoint": str(outcomes[name].checkpoint)} for name in outcomes},
        "timings": {"runs": timings, "total_wall_seconds": total},
        "machine": {"start": info_start, "end": machine()},
        "text": text,
    }
    _write_json(out / "paradox.json", result)
    (out / "paradox.txt").write_text(text + "\n", encoding="utf-8")
    plot(tables, out / "paradox.png",
         f"absdsl paradox: {cfg.preset} preset, {cfg.dataset}, {cfg.model}")
    return result


def _normalisation() -> str:
    from .analysis.tightness import AUC_NORMALISATION

    return AUC_NORMALISATION


# flags that set one ParadoxConfig field each (flag -> (field, type, help))
BUDGET_FLAGS: dict[str, tuple[str, type, str]] = {
    "--pgd-epochs": ("pgd_epochs", int, "epochs of the PGD start"),
    "--grad-epochs": ("grad_epochs", int, "GRAD epochs"),
    "--pgpe-epochs": ("pgpe_epochs", int, "PGPE epochs"),
    "--rgs-epochs": ("rgs_epochs", int, "RGS epochs"),
    "--grad-batches": ("grad_batches", int, "GRAD batches per epoch (default: the whole split)"),
    "--pgpe-batches": ("pgpe_batches", int, "PGPE generations (batches) per epoch"),
    "--rgs-batches": ("rgs_batches", int, "RGS batches per epoch"),
    "--batch-size": ("batch_size", int, "batch size of the PGD start and GRAD"),
    "--pgpe-batch-size": ("pgpe_batch_size", int, "PGPE batch size"),
    "--rgs-batch-size": ("rgs_batch_size", int, "RGS batch size"),
    "--popsize": ("popsize", int, "PGPE population size"),
    "--rgs-samples": ("rgs_samples", int, "RGS perturbed weight vectors per step"),
    "--grad-start": ("grad_start", str, "GRAD from 'scratch' (the paper) or from the 'pgd' start"),
    "--tightness-subset": ("tightness_subset", int, "test digits of the tightness curves"),
    "--tightness-n-eps": ("tightness_n_eps", int, "points of each tightness curve"),
    "--tightness-scope": ("tightness_scope", str,
                          "own: each domain on its own networks (and the start); all: every "
                          "domain on every network"),
    "--model": ("model", str, "cnn3, cnn5, cnn7, fc or module:factory"),
    "--train-subset": ("train_subset", int, "train on the first N training examples"),
    "--test-subset": ("test_subset", int, "certify N test examples (spread over the split)"),
    "--device": ("device", str, "training device (cpu, cuda, ...)"),
    "--milp-time-limit": ("milp_time_limit", float,
                          "HiGHS time per input with --complete (default 30)"),
    "--data-root": ("data_root", str, "folder of the full data sets"),
    "--population-eval": ("population_eval", str,
                          "PGPE/RGS populations: auto (measured), vmap, or loop (member by "
                          "member, never vmapped)"),
}
LIST_FIELDS = ("eps", "domains", "optimizers")


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick",
                        help=f"settings to start from: {', '.join(PRESETS)} (default quick)")
    parser.add_argument("--out", default=None,
                        help="output folder (default paradox-<preset>); run again to resume")
    parser.add_argument("--domains", default=None,
                        help="comma-separated domains (box, hbox, zonotope, crown-ibp, deeppoly)")
    parser.add_argument("--optimizers", default=None,
                        help="comma-separated stages: grad, pgpe, rgs")
    parser.add_argument("--eps", default=None, help="comma-separated eps in (0, 1]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="GRAD, PGPE and RGS epochs (the per-stage flags override it)")
    for flag, (name, kind, text) in BUDGET_FLAGS.items():
        parser.add_argument(flag, type=kind, default=None, dest=f"set_{name}", help=text)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any setting of the preset (paradox_config.json's keys); VALUE "
                             "is read as a TOML value, e.g. --set grad_lr=1e-3 --set "
                             "'grad_ramp_epochs={\"0.3\" = 3}'; repeatable")
    parser.add_argument("--complete", action="store_true", default=None,
                        help="certify with the exact MILP stage too (as absdsl certify "
                             "--complete): every network, the same cascade")
    parser.add_argument("--download", action="store_true", default=None,
                        help="download the data set where the machine is online")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds a different paradox run")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings and runs, and stop")
    parser.add_argument("--estimate", action="store_true",
                        help="time a few steps of every run, a certification and a tightness "
                             "curve, print the projected wall time of the experiment, and stop")
    parser.add_argument("--estimate-steps", type=int, default=2, metavar="N",
                        help="timed steps per run for --estimate (after one untimed)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads (default: torch's). On a machine shared "
                             "with other work, 1 can be many times faster: a descheduled "
                             "thread stalls the others at every op")
    parser.add_argument("--progress", action="store_true",
                        help="show the training loop's progress bars and epoch lines")
    parser.add_argument("--quiet", action="store_true", help="print only the table")


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs: values parsed as TOML (never evaluated)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ParadoxError(f"--set {item!r}: expected KEY=VALUE")
        if key not in FIELDS or key == "preset":
            raise ParadoxError(f"--set {item!r}: unknown paradox setting {key!r}")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text.strip()  # a bare word: a string
        if key in LIST_FIELDS and isinstance(value, str | int | float):
            value = _parse_list(str(value), key)
        out[key] = value
    return out


def config_from_args(args: argparse.Namespace) -> ParadoxConfig:
    overrides: dict[str, Any] = {
        "domains": _parse_list(args.domains, "domains") if args.domains is not None else None,
        "optimizers": (_parse_list(args.optimizers, "optimizers")
                       if args.optimizers is not None else None),
        "eps": _parse_list(args.eps, "eps") if args.eps is not None else None,
        "download": args.download, "complete": args.complete,
    }
    if args.epochs is not None:
        for name in ("grad_epochs", "pgpe_epochs", "rgs_epochs"):
            overrides[name] = args.epochs
    for _, (name, _, _) in BUDGET_FLAGS.items():
        value = getattr(args, f"set_{name}", None)
        if value is not None:
            overrides[name] = value
    overrides.update(_parse_set(list(getattr(args, "set", []) or [])))
    return make_config(args.preset, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ParadoxError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    out = Path(args.out if args.out is not None else f"paradox-{cfg.preset}")
    if args.dry_run:
        print(json.dumps({"out": str(out), "config": cfg.to_dict(),
                          "runs": [{"name": s.name, **s.overrides} for s in plan(cfg)]},
                         indent=2))
        return 0
    if args.estimate:
        if args.estimate_steps < 1:
            raise ParadoxError(f"--estimate-steps must be >= 1, got {args.estimate_steps}")
        est = estimate(cfg, steps=args.estimate_steps, quiet=args.quiet)
        print(format_estimate(est))
        return 0
    if not args.quiet:
        print(f"absdsl paradox: preset {cfg.preset}, {cfg.dataset}, model {cfg.model}, eps "
              f"{', '.join(map(eps_key, cfg.eps))}, domains {', '.join(cfg.domains)}, "
              f"optimizers {', '.join(cfg.optimizers)} -> {out}", flush=True)
    result = experiment(cfg, out, overwrite=args.overwrite, quiet=args.quiet,
                        progress=args.progress)
    print(result["text"])
    if not args.quiet:
        print(f"wrote {out / 'paradox.json'} and {out / 'paradox.png'} "
              f"({result['timings']['total_wall_seconds']:.0f} s)")
    return 0


__all__ = ["ParadoxConfig", "ParadoxError", "PRESETS", "experiment", "make_config", "plan",
           "register", "run"]
