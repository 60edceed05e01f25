"""``absdsl bench train``: one training epoch per domain, as a ratio to a standard epoch.

Every row trains CNN3 (by default) on mnist5k at the full eps (no ramp) from the same
initialisation, in the same process as the standard (natural) training it is divided by, so
the ratios do not depend on the machine's absolute speed. An epoch's time is measured over
``--steps`` timed batches (after two untimed ones) and scaled to the number of batches in a
full epoch; ``--steps 0`` times the whole epoch.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from .programs import BUILTIN_DOMAINS, canonical_domain


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--domains", default=",".join(BUILTIN_DOMAINS),
                        help="comma-separated domains (default: every built-in)")
    parser.add_argument("--model", default="cnn3")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10,
                        help="timed batches per domain, scaled to a full epoch (0: whole epoch)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write rows as JSON")


def _epoch_seconds(overrides: dict[str, Any], steps: int, warmup: int = 2) -> float:
    """Wall time of one epoch of GRAD steps (after ``warmup`` untimed steps).

    With ``steps`` > 0 only that many batches are timed and the time is scaled up to the
    epoch's number of batches.
    """
    from .config import resolve
    from .data import load_dataset, num_batches, train_batches
    from .models import build_model, ibp_init
    from .programs import compile_programs, required_domains
    from .steprule import TrainBatch, make_step_rule

    cfg = resolve(overrides)
    info, train, _ = load_dataset(cfg.dataset, cfg.data_root, False)
    train = train.subset(cfg.train_subset)
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    ibp_init(model)
    programs = compile_programs(model, required_domains(cfg.domain, cfg.method))
    rule = make_step_rule("grad", model, cfg, programs)

    def batches():
        return train_batches(train, int(cfg.batch_size or 1), 0, 0)

    for i, (x, y, _) in enumerate(batches()):
        if i >= warmup:
            break
        rule.step(TrainBatch(x, y, cfg.eps, 0, i, beta=0.5))
    total = num_batches(len(train), int(cfg.batch_size or 1))
    timed = total if steps <= 0 else min(steps, total)
    start = time.perf_counter()
    for i, (x, y, _) in enumerate(batches()):
        if i >= timed:
            break
        rule.step(TrainBatch(x, y, cfg.eps, 0, i, beta=0.5))
    return (time.perf_counter() - start) * total / timed


def run(args: argparse.Namespace) -> int:
    domains = [canonical_domain(d) for d in args.domains.split(",") if d.strip()]
    common = dict(dataset=args.dataset, model=args.model, eps=args.eps,
                  batch_size=args.batch_size, epochs=1,
                  warmup_epochs=0, ramp_epochs=0)
    standard = _epoch_seconds(common | {"method": "natural"}, args.steps)
    rows = [{"method": "standard", "domain": "-", "seconds": standard, "ratio": 1.0}]
    for domain in domains:
        sec = _epoch_seconds(common | {"method": "certified", "domain": domain}, args.steps)
        rows.append({"method": "certified", "domain": domain, "seconds": sec,
                     "ratio": sec / standard})
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    timed = "whole epochs" if args.steps <= 0 else f"{args.steps} timed batches, scaled"
    print(f"one epoch of {args.model} on {args.dataset}, batch {args.batch_size}, "
          f"eps {args.eps}; {timed} ({machine}, torch {torch.__version__})")
    print(f"{'domain':<12}{'seconds':>10}{'x standard':>12}")
    for r in rows:
        name = r["domain"] if r["method"] != "standard" else "standard"
        print(f"{name:<12}{r['seconds']:>10.2f}{r['ratio']:>12.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0
