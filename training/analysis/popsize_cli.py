"""The ``absdsl analyze popsize RUN`` subcommand (the paper's figure 7)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from ..checkpoint import atomic_write_text
from .arg_types import add_population_options, floats
from .landscape import check_direction_option
from .popsize import DEFAULT_POPSIZES, check_options, plot_popsize, population_effect


def _ints(text: str) -> list[int]:
    values = floats(text)
    if any(int(v) != v for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    return [int(v) for v in values]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None],
             load: Callable[..., Any], check_domains: Callable[..., Any]) -> None:
    """Add the subcommand to the ``analyze`` subparsers (``common`` adds RUN, --out, ...)."""
    p = sub.add_parser("popsize",
                       help="PGPE's population size: the smoothed loss and gradient it sees "
                            "(the paper's figure 7)",
                       description="Along the DeepPoly gradient (or --direction), the mean "
                                   "loss of a population of n_ps members at every grid point "
                                   "for each population size, its roughness, and the cosine "
                                   "of PGPE's gradient estimate to a reference smoothed "
                                   "gradient; popsize.json and popsize.png.")
    common(p)
    p.add_argument("--domain", default="deeppoly", help="domain of the loss (default deeppoly)")
    p.add_argument("--direction", default="gradient",
                   help="'gradient' (of --gradient-domain's loss, default), 'random' or a .pt "
                        "file: dict parameter name -> tensor")
    p.add_argument("--gradient-domain", default="deeppoly",
                   help="domain whose loss gradient is the 'gradient' direction")
    p.add_argument("--popsizes", type=_ints, default=list(DEFAULT_POPSIZES),
                   help="even population sizes (default 8,32,128,512)")
    p.add_argument("--sigma", type=float, default=1e-3,
                   help="PGPE's standard deviation (default 1e-3, the paper's)")
    p.add_argument("--span", type=float, default=0.05,
                   help="t runs over [-span, span] (default 0.05)")
    p.add_argument("--points", type=int, default=21, help="grid points (default 21)")
    p.add_argument("--repeats", type=int, default=4,
                   help="PGPE gradient estimates per population size (default 4)")
    p.add_argument("--reference-samples", type=int, default=1024,
                   help="perturbations of the reference gradient (default 1024)")
    add_population_options(p)
    p.set_defaults(analysis_run=lambda args: run(args, load, check_domains))


def run(args: argparse.Namespace, load: Callable[..., Any],
        check_domains: Callable[..., Any]) -> int:
    check_options(args.popsizes, args.sigma, args.span, args.points, args.repeats,
                  args.reference_samples)
    check_direction_option(args.direction, args.inputs)
    start = time.perf_counter()
    cfg, model, x, y, path, out = load(args, args.inputs)
    eps = cfg.eps if args.eps is None else args.eps
    check_domains(model, [args.domain, args.gradient_domain], tuple(x.shape[1:]))
    data = population_effect(
        model, x, y, eps, domain=args.domain, direction=args.direction,
        gradient_domain=args.gradient_domain, sigma=args.sigma, popsizes=args.popsizes,
        span=args.span, points=args.points, repeats=args.repeats,
        reference_samples=args.reference_samples, seed=args.seed,
        memory_budget_mb=args.memory_budget, progress=lambda m: print(f"  {m}", flush=True))
    data.update(checkpoint=str(path), model=cfg.model, dataset=cfg.dataset,
                total_seconds=time.perf_counter() - start)
    json_file, png_file = out / "popsize.json", out / "popsize.png"
    atomic_write_text(json.dumps(data, indent=1) + "\n", json_file)
    plot_popsize(data, png_file)
    print(f"checkpoint {path}: {data['domain']} loss on {data['n_inputs']} test inputs, eps "
          f"{eps:g}, sigma {data['sigma']:g}, {data['direction']['detail']}")
    print(f"original loss: L(0) = {data['loss_at_0']:.4f}, roughness "
          f"{data['original_roughness']:.3g}; centre gradient's cosine to the reference "
          f"{data['centre_gradient_cosine']:.3f}")
    print("| n_ps | roughness | standard error / L(0) | PGPE gradient cosine (mean +- std) |")
    print("|---|---|---|---|")
    for n in data["popsizes"]:
        c = data["per_popsize"][str(n)]
        print(f"| {n} | {c['roughness']:.3g} | {c['standard_error']:.3g} | "
              f"{c['gradient_cosine_mean']:.3f} +- {c['gradient_cosine_std']:.3f} |")
    print(f"wrote {json_file} and {png_file} ({data['total_seconds']:.1f} s)")
    return 0
