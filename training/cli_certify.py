"""``absdsl certify``: natural, PGD-adversarial and certified accuracy of a checkpoint."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from absdsl.training.certify import CertifyError, CertifyOptions, certify_model, domain_trust
from absdsl.training.checkpoint import atomic_write_text
from absdsl.training.data import dataset_info, load_dataset
from absdsl.training.models import build_model

from .checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from .config import resolve


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                        help="a run folder (its newest checkpoint) or a checkpoint file")
    parser.add_argument("--domain", default=None,
                        help="domain to certify with, or 'tightest' for a cascade of every "
                             "built-in domain (default: the run's domain)")
    parser.add_argument("--eps", type=float, default=None, help="radius (default: the run's)")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("-n", "--num", type=int, default=None, help="first N inputs only")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="a margin lower bound (float64) must exceed this plus "
                             "--rel-tolerance times the computation's magnitude (default 1e-6)")
    parser.add_argument("--rel-tolerance", type=float, default=1e-9,
                        help="growth of the threshold per unit of the largest magnitude in the "
                             "input's bound computation (default 1e-9)")
    parser.add_argument("--uncertified-domain", action="store_true",
                        help="certify with a domain file that has not passed absdsl check; "
                             "every result is marked uncertified-domain")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--pgd-restarts", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--data-root", default=None, help="folder of torchvision data sets")
    parser.add_argument("--complete", nargs="?", const="bab", default=None,
                        choices=COMPLETE_STAGES,
                        help="add a complete stage for inputs left undecided: ReLU branch and "
                             "bound (bab, the default) or the exact MILP (milp)")
    parser.add_argument("--time-limit", "--milp-time-limit", dest="milp_time_limit",
                        type=float, default=30.0, metavar="SECONDS",
                        help="time per input for --complete (default 30)")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="per-input results as JSON (default: RUN/certify_<domain>.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def load_run_model(target: Path, data_root: str | None = None) -> tuple[Any, Any, Any, Path]:
    """(config, model with the checkpoint's weights, checkpoint path, run folder)."""

    path = latest_checkpoint(target) if target.is_dir() else target
    ckpt = load_checkpoint(path)
    overrides = {k: v for k, v in ckpt["config"].items() if v is not None}
    if data_root is not None:
        overrides["data_root"] = data_root
    cfg = resolve(overrides)
    model = build_model(cfg.model, dataset_info(cfg.dataset))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit model {cfg.model!r}: {err}") from err
    if target.is_dir():
        run_dir = target
    else:
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return cfg, model, path, run_dir


def check_options(args: argparse.Namespace) -> None:
    """Options checked before the checkpoint or the data are read (one clear line each)."""
    # lazy: heavy dependency scipy (training.milp), off the CLI start
    from .milp import check_time_limit

    check_time_limit(args.milp_time_limit)
    if args.num is not None and args.num < 1:
        raise CertifyError(f"-n/--num must be >= 1, got {args.num}")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    cfg, model, path, run_dir = load_run_model(Path(args.target), args.data_root)
    domain = args.domain or cfg.certify_domain or cfg.domain
    if cfg.method in ("pgd", "natural") and args.domain is None and cfg.certify_domain is None:
        domain = "box"
    if domain != "tightest":  # the trust gate, before the data are read
        domain_trust(domain, args.uncertified_domain)
    info, train, test = load_dataset(cfg.dataset, cfg.data_root, False)
    split = (test if args.split == "test" else train).subset(args.num)
    options = CertifyOptions(
        eps=cfg.eps if args.eps is None else args.eps, domain=domain,
        tolerance=args.tolerance, pgd_steps=args.pgd_steps, pgd_restarts=args.pgd_restarts,
        batch_size=args.batch_size, extra_stages=[args.complete] if args.complete else [],
        milp_time_limit=args.milp_time_limit, rel_tolerance=args.rel_tolerance,
        uncertified_domain=args.uncertified_domain,
    )
    if args.complete:
        load_complete_stage(args.complete)
    report = certify_model(model, info, split, options, progress=not args.quiet)
    out = Path(args.out) if args.out else run_dir / f"certify_{Path(domain).stem}.json"
    data = report.to_json()
    data["summary"]["checkpoint"] = str(path)
    atomic_write_text(json.dumps(data, indent=1) + "\n", out)
    s = data["summary"]
    print(f"checkpoint {path}: {s['n']} {args.split} inputs, eps {s['eps']}, "
          f"domain {s['domain']} ({', '.join(s['certify_domains'])})")
    print(f"natural {s['natural_acc']:.4f}  adversarial (PGD) {s['adversarial_acc']:.4f}  "
          f"certified {s['certified_acc']:.4f}")
    print(f"counts: {s['counts']}")
    print(f"certificates: {s['certificate_rule']}")
    for t in report.trust:
        print(f"domain {t.domain}: {t.trust}, {t.file} (sha256 {t.sha256[:16]})")
    if report.skipped_domains:
        print(f"skipped domains: {report.skipped_domains}")
    print(f"per-input results: {out}")
    return 1 if report_soundness_errors(s["soundness_errors"]) else 0


def report_soundness_errors(errors: list[dict[str, Any]]) -> bool:
    """Print every certificate PGD refuted (a bug in the domain: the summary's
    ``soundness_errors``); True if there was one."""
    for e in errors:
        print(f"SOUNDNESS ERROR: input {e['index']}: {e['error']}", file=sys.stderr)
    if errors:
        print(f"SOUNDNESS ERROR: {len(errors)} certificate(s) refuted by PGD; they are counted "
              f"as falsified, not certified", file=sys.stderr)
    return bool(errors)


# the complete stages and the modules that register them when imported (by name: branch and
# bound lives in the applications layer, above training)
COMPLETE_STAGES = ("bab", "milp")
_STAGE_MODULES = {"bab": "absdsl.verification.relu_bab_stage", "milp": "absdsl.training.milp"}


def load_complete_stage(name: str = "milp") -> None:
    """Import the module that registers the complete stage ``name``."""
    importlib.import_module(_STAGE_MODULES[name])
