"""The ``absdsl analyze smoothing-gradient RUN`` subcommand (parser and runner)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from ..checkpoint import atomic_write_text
from ..smoothing.estimators import ESTIMATORS
from .arg_types import add_population_options, floats, names
from .smoothing_gradient import (
    DEFAULT_DOMAINS,
    DEFAULT_SIGMAS,
    best_per_domain,
    check_options,
    compare_estimators,
    format_table,
    plot,
)
from .tightness import AnalysisError


def _grad_cost(text: str) -> float | None:
    if text == "auto":
        return None
    try:
        return float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from err


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None],
             load: Callable[..., Any], check_domains: Callable[..., Any]) -> None:
    """Add the subcommand to the ``analyze`` subparsers (``common`` adds RUN, --out, ...)."""
    p = sub.add_parser("smoothing-gradient",
                       help="estimators of the smoothed gradient at equal cost: cosine to a "
                            "reference and variance",
                       description="Every estimator of grad L_sigma (pgpe, rgs, antithetic-cv) "
                                   "at the same budget of loss evaluations (a gradient costs "
                                   "c of them, measured); cosine to a reference smoothed "
                                   "gradient and variance per domain and sigma; "
                                   "smoothing_gradient.json and .png.")
    common(p)
    p.add_argument("--domains", type=names, default=list(DEFAULT_DOMAINS),
                   help="comma-separated domains (default box,crown-ibp,deeppoly)")
    p.add_argument("--sigmas", type=floats, default=list(DEFAULT_SIGMAS),
                   help="smoothing standard deviations (default 1e-4,1e-3,1e-2)")
    p.add_argument("--estimators", type=names, default=list(ESTIMATORS),
                   help=f"comma-separated, of {', '.join(ESTIMATORS)} (default all)")
    p.add_argument("--budget", type=float, default=64.0,
                   help="loss evaluations each estimate may spend (default 64)")
    p.add_argument("--grad-cost", type=_grad_cost, default=None, metavar="auto|C",
                   help="loss evaluations one gradient evaluation costs (default auto: "
                        "measured time ratio per domain)")
    p.add_argument("--repeats", type=int, default=8,
                   help="independent estimates per estimator (default 8)")
    p.add_argument("--reference-samples", type=int, default=4096,
                   help="perturbations of the reference gradient (default 4096; a multiple "
                        "of 4)")
    add_population_options(p)
    p.set_defaults(analysis_run=lambda args: run(args, load, check_domains))


def run(args: argparse.Namespace, load: Callable[..., Any],
        check_domains: Callable[..., Any]) -> int:
    check_options(args.sigmas, args.estimators, args.budget, args.repeats,
                  args.reference_samples, args.grad_cost)
    if args.inputs < 1:
        raise AnalysisError(f"--inputs must be >= 1, got {args.inputs}")
    if not args.memory_budget > 0:
        raise AnalysisError(f"--memory-budget must be > 0 MiB, got {args.memory_budget}")
    start = time.perf_counter()
    cfg, model, x, y, path, out = load(args, args.inputs)
    eps = cfg.eps if args.eps is None else args.eps
    domains = check_domains(model, args.domains, tuple(x.shape[1:]))
    data = compare_estimators(
        model, x, y, eps, domains=domains, sigmas=args.sigmas, estimators=args.estimators,
        budget=args.budget, repeats=args.repeats, reference_samples=args.reference_samples,
        grad_cost=args.grad_cost, seed=args.seed, memory_budget_mb=args.memory_budget,
        progress=lambda m: print(f"  {m}", flush=True))
    data.update(checkpoint=str(path), model=cfg.model, dataset=cfg.dataset,
                best=best_per_domain(data), total_seconds=time.perf_counter() - start)
    json_file, png_file = out / "smoothing_gradient.json", out / "smoothing_gradient.png"
    atomic_write_text(json.dumps(data, indent=1) + "\n", json_file)
    plot(data, png_file)
    print(f"checkpoint {path}: {data['n_inputs']} test inputs, eps {eps:g}, "
          f"{data['n_parameters']} weights, budget {args.budget:g} loss evaluations")
    print(format_table(data))
    for name, per in data["best"].items():
        print(f"best at equal cost, {name}: " +
              ", ".join(f"sigma {s}: {e}" for s, e in per.items()))
    print(f"wrote {json_file} and {png_file} ({data['total_seconds']:.1f} s)")
    return 0
