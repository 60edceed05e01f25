"""``--estimate``: time a few steps of every run and project the wall time."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import absdsl
from absdsl.compiler.specs import margin_spec
from absdsl.training.attacks import PGDConfig, pgd_attack
from absdsl.training.data import load_dataset, train_batches
from absdsl.training.loop import Trainer
from absdsl.training.models import build_model
from absdsl.training.programs import CASCADE_ORDER
from absdsl.training.steprule import TrainBatch

from .config import (
    ParadoxConfig,
    ParadoxError,
    check_data_available,
    eps_key,
)
from .plan import RunSpec, plan, train_config
from .runs import (
    _log,
    check_domains,
    spread_subset,
    tightness_domains,
)


# ---- estimate -----------------------------------------------------------------------------
def _time_run(spec: RunSpec, steps: int) -> dict[str, Any]:
    """Set-up seconds, seconds per step (``steps`` timed after one untimed, at the target eps,
    from fresh weights) and the number of steps of one run."""

    cfg = train_config(spec, None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = _now()
        trainer = Trainer(cfg, Path(tmp), progress=False)
        trainer.setup(None)
        setup = _since(t0)
        try:
            total = trainer.steps_per_epoch * int(cfg.epochs or 0)
            batches = list(train_batches(trainer.train_split, int(cfg.batch_size or 1),
                                         cfg.seed, 0))
            eps = float(cfg.train_eps if cfg.train_eps is not None else cfg.eps)
            times = []
            for i in range(steps + 1):
                x, y, n = batches[i % len(batches)]
                t = _now()
                trainer.rule.step(TrainBatch(x, y, eps, 0, i, beta=cfg.beta_start,
                                             kappa=float(cfg.kappa_start or 0.0),
                                             weight=x.shape[0] / n))
                times.append(_since(t))
        finally:
            trainer.close()
    row: dict[str, Any] = {"name": spec.name, "steps": total, "batch_size": cfg.batch_size}
    for k, prefix in enumerate(("", "cpu_")):  # wall-clock, then this process's CPU time
        per_step = sum(t[k] for t in times[1:]) / steps
        row.update({f"{prefix}setup_seconds": setup[k], f"{prefix}seconds_per_step": per_step,
                    f"{prefix}first_step_seconds": times[0][k],
                    f"{prefix}projected_seconds": setup[k] + times[0][k]
                    + per_step * max(total - 1, 0)})
    return row


def _now() -> tuple[float, float]:
    """Wall-clock and process CPU seconds: with one torch thread the CPU time is what the
    step takes on an idle core, whatever else the machine runs."""
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


def _time_bounds(cfg: ParadoxConfig, eps: float, digits: int) -> dict[str, Any]:
    """Per domain: compile seconds and bound seconds per digit (float64, as the cascade and
    the tightness curves run them), and PGD seconds per digit, on a fresh network."""

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
        t = _now()
        prog = absdsl.compile(model64, domain=name, input_shape=tuple(info.shape))
        compiled = _since(t)
        with torch.no_grad():
            prog(lo, hi, spec=spec)  # the first call may trace or warm caches
            t = _now()
            prog(lo, hi, spec=spec)
        bound = _since(t)
        out["domains"][name] = {
            f"{prefix}{key}": value for k, prefix in enumerate(("", "cpu_"))
            for key, value in (("compile_seconds", compiled[k]),
                               ("seconds_per_digit", bound[k] / y.shape[0]))}
    model32 = model.float()
    t = _now()
    pgd_attack(model32, x, y, eps, PGDConfig(steps=cfg.eval_pgd_steps,
                                             restarts=cfg.eval_pgd_restarts),
               generator=torch.Generator().manual_seed(0))
    pgd = _since(t)
    out["pgd_seconds_per_digit"] = pgd[0] / y.shape[0]
    out["cpu_pgd_seconds_per_digit"] = pgd[1] / y.shape[0]
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
    bounds = {eps_key(eps): _time_bounds(cfg, eps, min(digits, cfg.test_subset or 10_000))
              for eps in cfg.eps}
    measured = {"step_units": step_units(cfg, rows), "bounds": bounds}
    cpu = {"step_units": step_units(cfg, rows, "cpu_"), "bounds": _bounds_of(bounds, "cpu_")}
    projected, projected_cpu = project(cfg, measured), project(cfg, cpu)
    totals = ("train", "certify", "tightness", "total")
    return {
        "config": cfg.to_dict(), "standard_step": standard, "runs": rows,
        "bounds": bounds, "step_units": measured["step_units"], "cpu_measured": cpu,
        "certify_seconds_per_network": projected["certify_seconds_per_network"],
        "tightness_seconds": projected["tightness_seconds"],
        "projected_seconds": {k: projected[k] for k in totals},
        "projected_cpu_seconds": {k: projected_cpu[k] for k in totals},
        "estimate_wall_seconds": time.perf_counter() - wall,
        "load_average": {"start": load_start, "end": machine()["load_average"]},
    }


# ---- the projection: measured unit costs x the config's counts ---------------------------
TRAIN_EXAMPLES = {"mnist5k": 4000, "mnist": 60_000, "fashion-mnist": 60_000,
                  "cifar10": 50_000}


def unit_key(spec: RunSpec) -> str:
    """What a step's cost depends on besides its size: optimiser, domain and eps."""
    return f"{spec.optimizer}-{spec.domain or 'box'}@{eps_key(spec.eps)}"


def members(spec: RunSpec) -> int:
    """Loss (PGPE) or gradient (RGS) evaluations of a step per example: 1 for PGD and GRAD."""
    options = spec.overrides.get("options", {})
    if spec.optimizer == "pgpe":
        return int(options["popsize"])
    if spec.optimizer == "rgs":
        return int(options["rgs_samples"])
    return 1


def run_steps(spec: RunSpec, cfg: ParadoxConfig) -> int:
    """Optimiser steps of a run: epochs x batches of its (sub)set of the training split."""
    o = spec.overrides
    examples = o.get("train_subset") or TRAIN_EXAMPLES.get(cfg.dataset, 60_000)
    return int(o["epochs"]) * -(-int(examples) // int(o["batch_size"]))


def step_units(cfg: ParadoxConfig, rows: list[dict[str, Any]],
               prefix: str = "") -> dict[str, dict[str, float]]:
    """Per unit key: seconds per example and member of a step, and the set-up seconds
    (``prefix`` "cpu_": from the process's CPU time instead of the wall clock)."""
    out: dict[str, dict[str, float]] = {}
    for spec, row in zip(plan(cfg), rows, strict=True):
        size = int(spec.overrides["batch_size"]) * members(spec)
        per_step = row[f"{prefix}seconds_per_step"]
        out[unit_key(spec)] = {"seconds_per_example_member": per_step / size,
                               "setup_seconds": row[f"{prefix}setup_seconds"]
                               + row[f"{prefix}first_step_seconds"] - per_step}
    return out


def _bounds_of(bounds: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The bound timings under the plain keys, read from the ``prefix``ed ones."""
    return {eps: {"digits": b["digits"],
                  "pgd_seconds_per_digit": b[f"{prefix}pgd_seconds_per_digit"],
                  "domains": {d: {"compile_seconds": v[f"{prefix}compile_seconds"],
                                  "seconds_per_digit": v[f"{prefix}seconds_per_digit"]}
                              for d, v in b["domains"].items()}}
            for eps, b in bounds.items()}


def project(cfg: ParadoxConfig, measured: dict[str, Any]) -> dict[str, Any]:
    """Projected seconds of the experiment from measured unit costs (``step_units`` of an
    estimate of the same model and domains, and its per-digit bound timings): a run costs
    set-up + steps x batch x members x seconds per example-member; certification sends
    every test digit through every bound stage and PGD; tightness every curve point."""
    units, bounds = measured["step_units"], measured["bounds"]
    runs: dict[str, float] = {}
    for spec in plan(cfg):
        unit = units.get(unit_key(spec))
        if unit is None:
            raise ParadoxError(f"no measured step cost for {unit_key(spec)}: estimate a "
                               f"preset with that optimiser, domain and eps first")
        runs[spec.name] = unit["setup_seconds"] + run_steps(spec, cfg) * int(
            spec.overrides["batch_size"]) * members(spec) * unit["seconds_per_example_member"]
    n_test = cfg.test_subset or 10_000
    certify: dict[str, float] = {}
    tight: dict[str, float] = {}
    for eps in cfg.eps:
        b = bounds[eps_key(eps)]
        doms = b["domains"]
        certify[eps_key(eps)] = sum(
            doms[d]["compile_seconds"] + n_test * doms[d]["seconds_per_digit"]
            for d in CASCADE_ORDER) + n_test * b["pgd_seconds_per_digit"]
        for spec in plan(cfg):
            if spec.eps == eps:
                tight[spec.name] = sum(
                    doms[d]["compile_seconds"] + cfg.tightness_n_eps * cfg.tightness_subset
                    * doms[d]["seconds_per_digit"] for d in tightness_domains(spec, cfg))
    train = sum(runs.values())
    cert = sum(certify[eps_key(spec.eps)] for spec in plan(cfg))
    tightness = sum(tight.values())
    return {"runs": runs, "certify_seconds_per_network": certify, "tightness_seconds": tight,
            "train": train, "certify": cert, "tightness": tightness,
            "total": train + cert + tightness}


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
    c = est["projected_cpu_seconds"]
    lines.append(f"projected from this process's CPU time (an idle machine, one thread per "
                 f"torch thread): training {c['train']:.0f} s + certification <= "
                 f"{c['certify']:.0f} s + tightness {c['tightness']:.0f} s = {c['total']:.0f} s "
                 f"({c['total'] / 3600:.2f} h)")
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
