"""The whole experiment: every run, certified and measured, into one folder."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from absdsl.training.analysis.tightness import (
    AUC_NORMALISATION,
)
from absdsl.training.data import load_dataset

from .config import (
    FORMAT,
    METRICS,
    SMOOTHERS,
    VERSION,
    ParadoxConfig,
    check_data_available,
    complete_stage,
)
from .estimate import machine
from .plan import plan, start_of, train_config
from .report import (
    build_tables,
    format_tables,
    plot,
)
from .runs import (
    RunOutcome,
    _log,
    _write_json,
    certify_run,
    check_domains,
    ensure_run,
    prepare_out,
    spread_subset,
    tightness_run,
)


def experiment(cfg: ParadoxConfig, out: Path, *, overwrite: bool = False, quiet: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out``; returns what paradox.json holds."""

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
            "deeppoly bounds (float64, margin > tolerance) -> PGD" + {
                "milp": f" -> exact MILP (HiGHS, {cfg.milp_time_limit:g} s per input)",
                "bab": f" -> ReLU branch and bound ({cfg.milp_time_limit:g} s per input)",
            }.get(complete_stage(cfg) or "", ""),
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
    return AUC_NORMALISATION
