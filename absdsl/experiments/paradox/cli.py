"""The ``absdsl paradox`` command: flags, ``--set`` parsing and the run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import tomllib
import torch

from .config import (
    FIELDS,
    PRESETS,
    ParadoxConfig,
    ParadoxError,
    _parse_list,
    eps_key,
    make_config,
)
from .estimate import estimate, format_estimate
from .experiment import experiment
from .plan import plan

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
                          "time per input of the --complete stage (default 30)"),
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
    parser.add_argument("--complete", nargs="?", const="bab", default=None,
                        choices=("bab", "milp"),
                        help="certify with a complete stage too (as absdsl certify "
                             "--complete): ReLU branch and bound (bab, the default) or the "
                             "exact MILP (milp); every network, the same cascade")
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
