"""``absdsl analyze``: tightness (certified-accuracy AUC, propagation tightness) and landscape.

    absdsl analyze tightness RUN --domains box,hbox,crown-ibp,deeppoly --eps-max 0.1
    absdsl analyze landscape RUN --domain box,crown-ibp,deeppoly --direction gradient
    absdsl analyze popsize RUN --popsizes 8,32,128,512

RUN is a run folder of ``absdsl train`` (its newest checkpoint) or a checkpoint file; the
inputs are the first N of the run's test split (for mnist5k a class-balanced prefix, see
:func:`absdsl.training.data.mnist5k_split`). Every option and every domain (it is
compiled for the model) is checked before the first bound is computed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from absdsl.training.analysis.landscape import (
    check_direction_option,
    check_options,
    loss_landscape,
    plot_landscape,
)
from absdsl.training.analysis.tightness import (
    AUC_NORMALISATION,
    certified_auc,
    compile_domain,
    eps_grid,
    float64_copy,
    propagation_tightness_per_margin,
)
from absdsl.training.checkpoint import CheckpointError, atomic_write_text
from absdsl.training.cli_certify import load_run_model
from absdsl.training.data import load_dataset
from absdsl.training.programs import canonical_domain

from .arg_types import floats, names
from .popsize_cli import register as register_popsize
from .smoothing_gradient_cli import register as register_smoothing_gradient
from .tightness import AnalysisError


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    t = sub.add_parser("tightness", help="certified-accuracy AUC per domain and Mao et al.'s "
                                         "propagation tightness",
                       description="Certified accuracy over an eps grid per domain, its "
                                   "normalised area (AUC), and propagation tightness.")
    _common(t)
    t.add_argument("--domains", type=names, default=["box", "hbox", "crown-ibp", "deeppoly"],
                   help="comma-separated domains (default box,hbox,crown-ibp,deeppoly)")
    t.add_argument("--eps-max", type=float, default=None,
                   help="largest radius of the grid (default: the run's eps)")
    t.add_argument("--n-eps", type=int, default=11, help="grid points in [0, eps-max] "
                                                         "(default 11)")
    t.add_argument("--samples", "-n", dest="samples", type=int, default=100,
                   help="evaluate on the first N test inputs (default 100)")
    t.add_argument("--tightness-eps", type=float, default=None,
                   help="radius of propagation tightness (default: --eps-max)")
    t.add_argument("--tolerance", type=float, default=1e-6,
                   help="certified iff every float64 margin lower bound exceeds this")
    t.set_defaults(analysis_run=_run_tightness)

    ls = sub.add_parser("landscape", help="loss along a weight-space direction: jumps, "
                                          "Gaussian smoothing, sensitivity",
                        description="The loss of each domain along a direction in weight "
                                    "space, its jumps, its Gaussian-smoothed version and "
                                    "its sensitivity; landscape.json and landscape.png.")
    _common(ls)
    ls.add_argument("--domain", "--domains", dest="domains", type=names,
                    default=["box", "crown-ibp", "deeppoly"],
                    help="comma-separated domains (default box,crown-ibp,deeppoly)")
    ls.add_argument("--direction", default="random",
                    help="'random' (filter-normalised), 'gradient' (of --gradient-domain's "
                         "loss) or a .pt file: dict parameter name -> tensor (default random)")
    ls.add_argument("--gradient-domain", default="deeppoly",
                    help="domain whose loss gradient is the 'gradient' direction")
    ls.add_argument("--eps", type=float, default=None, help="radius (default: the run's)")
    ls.add_argument("--span", type=float, default=0.05,
                    help="t runs over [-span, span], in weight-space L2 units (default 0.05)")
    ls.add_argument("--points", type=int, default=41, help="grid points (default 41)")
    ls.add_argument("--sigmas", type=floats, default=[1e-6, 5e-5, 5e-4],
                    help="smoothing standard deviations (default 1e-6,5e-5,5e-4)")
    ls.add_argument("--samples", type=int, default=16,
                    help="noise samples per grid point and sigma (default 16)")
    ls.add_argument("--radii", type=floats, default=[1e-5, 1e-4, 1e-3, 1e-2],
                    help="sensitivity radii (default 1e-5,1e-4,1e-3,1e-2)")
    ls.add_argument("--sensitivity-samples", type=int, default=8,
                    help="random unit directions per radius (default 8)")
    ls.add_argument("--inputs", type=int, default=32,
                    help="the loss is over the first N test inputs (default 32)")
    ls.add_argument("--jump-ratio", type=float, default=10.0,
                    help="a jump exceeds this many grid steps of local slope (default 10)")
    ls.add_argument("--memory-budget", type=float, default=1024.0, metavar="MIB",
                    help="MiB one vmapped population call may use (default 1024)")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--device", default="cpu", help="torch device of the evaluation "
                                                    "(default cpu; e.g. cuda)")
    ls.set_defaults(analysis_run=_run_landscape)
    register_smoothing_gradient(sub, _common, _load, _check_domains)
    register_popsize(sub, _common, _load, _check_domains)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder (its newest checkpoint) or a checkpoint file")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the JSON (and PNG) (default: RUN/analysis)")
    p.add_argument("--data-root", default=None, help="folder of torchvision data sets")


def run(args: argparse.Namespace) -> int:
    fn = getattr(args, "analysis_run", None)
    if fn is None:
        raise AnalysisError("choose an analysis: 'absdsl analyze tightness|landscape|"
                            "smoothing-gradient|popsize RUN' (see --help)")
    return int(fn(args))


def _load(args: argparse.Namespace, n: int) -> tuple[Any, Any, Any, Any, Path, Path]:
    """(config, model, x, y, checkpoint path, output folder) for the first n test inputs."""

    target = Path(args.target)
    if not target.exists():
        raise CheckpointError(f"no run folder or checkpoint at {target}")
    cfg, model, path, run_dir = load_run_model(target, args.data_root)
    model.eval()
    _, _, test = load_dataset(cfg.dataset, cfg.data_root, False)
    x, y = test.subset(n).as_float()
    out = Path(args.out) if args.out else run_dir / "analysis"
    return cfg, model, x, y, path, out


def _check_domains(model: Any, names: list[str], shape: tuple[int, ...]) -> list[str]:
    """Canonical names; each compiled for the model now (an op it lacks fails here)."""

    if not names:
        raise AnalysisError("no domain given")
    canonical = [canonical_domain(d) for d in names]
    model64 = float64_copy(model)
    for name in canonical:
        compile_domain(model64, name, shape)
    return canonical


def _run_tightness(args: argparse.Namespace) -> int:
    if args.eps_max is not None:
        eps_grid(args.eps_max, args.n_eps)
    elif args.n_eps < 2:
        raise AnalysisError(f"n_eps must be an integer >= 2, got {args.n_eps}")
    if args.samples < 1:
        raise AnalysisError(f"--samples must be >= 1, got {args.samples}")
    start = time.perf_counter()
    cfg, model, x, y, path, out = _load(args, args.samples)
    eps_max = cfg.eps if args.eps_max is None else args.eps_max
    eps_grid(eps_max, args.n_eps)
    tau_eps = eps_max if args.tightness_eps is None else args.tightness_eps
    if not 0 <= tau_eps <= 1:
        raise AnalysisError(f"--tightness-eps must lie in [0, 1], got {tau_eps}")
    domains = _check_domains(model, args.domains, tuple(x.shape[1:]))
    tau: dict[str, Any] = {"eps": tau_eps, "definition":
                           "tau = |C W_L D_{L-1} ... D_1 W_1| e / (|C W_L| D_{L-1} |W_{L-1}| "
                           "... D_1 |W_1| e) per input and margin row of C (e_y - e_i), "
                           "D_i = diag(1[pre-activation at the clean x > 0]), e the clipped "
                           "half-width; mean over margins and inputs (Mao et al. 2024)"}
    t0 = time.perf_counter()
    try:
        per = propagation_tightness_per_margin(model, x, y, tau_eps)
        tau.update(value=float(per.mean()), min=float(per.min()), max=float(per.max()))
    except AnalysisError as err:
        tau.update(value=None, reason=str(err))
    tau["seconds"] = time.perf_counter() - t0
    results: dict[str, Any] = {}
    for name in domains:
        t0 = time.perf_counter()
        res = certified_auc(model, x, y, name, eps_max, args.n_eps, tolerance=args.tolerance)
        results[name] = {"auc": res.auc, "eps": res.eps, "certified": res.certified,
                         "seconds": time.perf_counter() - t0}
    grid = eps_grid(eps_max, args.n_eps)
    data = {"checkpoint": str(path), "model": cfg.model, "dataset": cfg.dataset,
            "split": "test", "n_inputs": int(x.shape[0]), "eps": grid,
            "precision": "float64", "tolerance": args.tolerance,
            "auc_normalisation": AUC_NORMALISATION, "domains": results,
            "propagation_tightness": tau, "seconds": time.perf_counter() - start}
    out_file = out / "tightness.json"
    atomic_write_text(json.dumps(data, indent=1) + "\n", out_file)
    print(f"checkpoint {path}: {x.shape[0]} test inputs of {cfg.dataset}, model {cfg.model}")
    head = "".join(f"  {e:>6.3g}" for e in grid)
    print(f"{'domain':<10} {'AUC':>6}  certified at eps:{head}")
    for name, r in results.items():
        cells = "".join(f"  {c:>6.3f}" for c in r["certified"])
        print(f"{name:<10} {r['auc']:>6.3f}  {'':16}{cells}")
    if tau["value"] is None:
        print(f"propagation tightness: n/a ({tau['reason']})")
    else:
        print(f"propagation tightness (Mao et al., eps {tau_eps:g}): {tau['value']:.4f} "
              f"(min {tau['min']:.4f}, max {tau['max']:.4f} over inputs and margins)")
    print(f"AUC: {AUC_NORMALISATION}")
    print(f"wrote {out_file} ({data['seconds']:.1f} s)")
    return 0


def _run_landscape(args: argparse.Namespace) -> int:
    check_options(args.span, args.points, args.sigmas, args.samples, args.radii,
                  args.sensitivity_samples)
    check_direction_option(args.direction, args.inputs)
    start = time.perf_counter()
    cfg, model, x, y, path, out = _load(args, args.inputs)
    eps = cfg.eps if args.eps is None else args.eps
    domains = _check_domains(model, args.domains, tuple(x.shape[1:]))

    def note(message: str) -> None:
        print(f"  {message}", flush=True)

    result = loss_landscape(model, x, y, eps, domains=domains, direction=args.direction,
                            gradient_domain=args.gradient_domain, span=args.span,
                            points=args.points, sigmas=args.sigmas, samples=args.samples,
                            radii=args.radii, sensitivity_samples=args.sensitivity_samples,
                            seed=args.seed, jump_ratio=args.jump_ratio, device=args.device,
                            memory_budget_mb=args.memory_budget, progress=note)
    data = result.to_json()
    data.update(checkpoint=str(path), model=cfg.model, dataset=cfg.dataset,
                total_seconds=time.perf_counter() - start)
    json_file, png_file = out / "landscape.json", out / "landscape.png"
    atomic_write_text(json.dumps(data, indent=1) + "\n", json_file)
    plot_landscape(data, png_file)
    print(f"checkpoint {path}: {x.shape[0]} test inputs, eps {eps:g}, "
          f"{data['direction']['kind']} direction, t in [-{args.span:g}, {args.span:g}] "
          f"({args.points} points)")
    radii = "".join(f"  r={r:<8.0e}" for r in result.radii)
    print(f"{'domain':<10} {'L(0)':>9} {'jumps':>6}  sensitivity S(r):{radii}")
    for name in result.domains:
        cells = "".join(f"  {v:<10.3g}" for v in result.sensitivity[name]["mean"])
        print(f"{name:<10} {result.loss_at_0[name]:>9.4f} {len(result.jumps[name]):>6}  "
              f"{'':16}{cells}")
        for j in result.jumps[name][:5]:
            print(f"    jump in t [{j.t_left:+.4g}, {j.t_right:+.4g}]: {j.delta:+.4g}")
    print(f"wrote {json_file} and {png_file} ({data['total_seconds']:.1f} s)")
    return 0
