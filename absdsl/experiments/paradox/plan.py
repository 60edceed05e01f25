"""The plan of the experiment: which runs, with which training configs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absdsl.training.config import resolve

from .config import (
    SMOOTHERS,
    ParadoxConfig,
    eps_key,
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

    overrides = json.loads(json.dumps(spec.overrides))
    if spec.optimizer in SMOOTHERS and init_checkpoint is not None:
        overrides["options"] = dict(overrides["options"], init_checkpoint=str(init_checkpoint))
    return resolve(overrides)
