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
