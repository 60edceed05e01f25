"""``absdsl train``: certified training from flags and/or a TOML config file.

Precedence: built-in defaults < the data set's preset < ``--config FILE`` < flags.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path
from typing import Any

from .config import METHODS, ConfigError, load_toml, parse_option, resolve

# flag -> (config key, type, help)
_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--dataset", "dataset", str, "mnist5k (embedded), mnist, fashion-mnist, cifar10"),
    ("--data-root", "data_root", str, "folder of the torchvision data sets"),
    ("--model", "model", str, "cnn3, cnn5, cnn7, fc, module:factory or file.onnx"),
    ("--domain", "domain", str, "box|ibp, hbox, zonotope|deepz, deeppoly|crown, crown-ibp, "
                                "or a domain file"),
    ("--method", "method", str, f"training method: {', '.join(METHODS)} (default certified)"),
    ("--optimizer", "optimizer", str, "step rule: grad (default), pgpe, rgs, antithetic-cv"),
    ("--eps", "eps", float, "L-infinity radius in pixel units [0, 1] (default 0.1)"),
    ("--train-eps", "train_eps", float, "radius trained for (default: --eps)"),
    ("--epochs", "epochs", int, "number of epochs"),
    ("--batch-size", "batch_size", int, "global batch size"),
    ("--lr", "lr", float, "Adam learning rate"),
    ("--lr-milestones", "lr_milestones", str, "comma-separated epochs after which lr decays"),
    ("--lr-decay", "lr_decay", float, "learning-rate decay factor at each milestone"),
    ("--grad-clip", "grad_clip", float, "gradient norm clipping threshold (0: off)"),
    ("--warmup-epochs", "warmup_epochs", int, "natural epochs (eps 0) before the ramp"),
    ("--ramp-epochs", "ramp_epochs", int, "epochs of the smooth eps ramp"),
    ("--kappa", "kappa", float, "natural-loss weight after the ramp (default 0)"),
    ("--kappa-start", "kappa_start", float, "natural-loss weight at the ramp's start"),
    ("--beta-start", "beta_start", float, "CROWN-IBP weight at the ramp's start (default 1)"),
    ("--beta-end", "beta_end", float, "CROWN-IBP weight at the ramp's end (default 0; "
                                      "1 for CROWN-IBP (R))"),
    ("--init", "init", str, "ibp (Shi et al., default) or default (Kaiming uniform)"),
    ("--sabr-lambda", "sabr_lambda", float, "SABR box radius as a fraction of eps"),
    ("--mtl-alpha", "mtl_alpha", float, "MTL-IBP weight of the IBP loss"),
    ("--pgd-steps", "pgd_steps", int, "PGD steps for training points"),
    ("--pgd-restarts", "pgd_restarts", int, "PGD restarts for training points"),
    ("--eval-pgd-steps", "eval_pgd_steps", int, "PGD steps for adversarial accuracy"),
    ("--eval-pgd-restarts", "eval_pgd_restarts", int, "PGD restarts for adversarial accuracy"),
    ("--eval-every", "eval_every", int, "test accuracy every N epochs (0: at the end only)"),
    ("--certify-domain", "certify_domain", str, "domain of the final certification, or "
                                                "'tightest' (default: --domain)"),
    ("--tolerance", "tolerance", float, "a margin lower bound must exceed this to certify"),
    ("--seed", "seed", int, "random seed"),
    ("--train-subset", "train_subset", int, "use only the first N training examples"),
    ("--test-subset", "test_subset", int, "evaluate on the first N test examples"),
    ("--device", "device", str, "cpu or cuda"),
]


def _smoothing_options() -> Any:
    """The PGPE/RGS options module, if that package is installed."""
    try:
        return importlib.import_module("absdsl.training.smoothing.options")
    except ModuleNotFoundError:
        return None


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML config file (flags override it)")
    parser.add_argument("--out", metavar="RUN", help="run folder (config, metrics, checkpoints)")
    parser.add_argument("--resume", metavar="RUN", help="continue the run in RUN")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing RUN")
    parser.add_argument("--download", action="store_true", default=None,
                        help="download the torchvision data set (needs the internet)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="step-rule option (repeatable), e.g. --option popsize=64")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-final-eval", action="store_true",
                        help="skip the final adversarial and certified evaluation")
    parser.add_argument("--uncertified-domain", action="store_true",
                        help="certify at the end with a domain file that has not passed "
                             "absdsl check; every result is marked uncertified-domain")
    group = parser.add_argument_group("training settings (override the config file)")
    for flag, dest, kind, help_text in _FLAGS:
        group.add_argument(flag, dest=f"cfg_{dest}", type=kind, default=None, help=help_text)
    smoothing = _smoothing_options()
    if smoothing is not None:
        smoothing.add_arguments(parser)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Config file values, then flags that were given."""
    out: dict[str, Any] = load_toml(args.config) if args.config else {}
    for _, dest, _, _ in _FLAGS:
        value = getattr(args, f"cfg_{dest}", None)
        if value is not None:
            out[dest] = value
    if isinstance(out.get("lr_milestones"), str):
        text = out["lr_milestones"].strip()
        try:
            out["lr_milestones"] = [int(v) for v in text.split(",") if v.strip()]
        except ValueError as err:
            raise ConfigError(f"--lr-milestones: expected comma-separated epochs, got {text!r}") \
                from err
    if args.download:
        out["download"] = True
    options = dict(out.get("options", {}))
    for text in args.option:
        key, value = parse_option(text)
        options[key] = value
    smoothing = _smoothing_options()
    if smoothing is not None:
        options.update(smoothing.options_from_args(args))
    if options:
        out["options"] = options
    return out


def _check_certify_domain(cfg: Any, args: argparse.Namespace) -> None:
    """The final certification's trust gate, run before training starts (not after it)."""
    from .certify import domain_trust

    if args.no_final_eval:
        return
    domain = cfg.certify_domain or ("box" if cfg.method in ("pgd", "natural") else cfg.domain)
    if domain != "tightest":
        domain_trust(domain, args.uncertified_domain)


def run(args: argparse.Namespace) -> int:
    import contextlib

    from .certify import allow_unchecked_domains
    from .cli_certify import report_soundness_errors
    from .loop import resume_state, run_training

    progress = not args.quiet
    trust = allow_unchecked_domains() if args.uncertified_domain else contextlib.nullcontext()
    if args.resume:
        _check_certify_domain(resume_state(Path(args.resume))[0], args)
        with trust:
            result = run_training(
                None, Path(args.resume), resume=True, epochs=getattr(args, "cfg_epochs", None),
                progress=progress, final_eval=not args.no_final_eval,
            )
        run_dir = Path(args.resume)
    else:
        if not args.out:
            raise ConfigError("give a run folder with --out RUN (or continue one with --resume)")
        cfg = resolve(overrides_from_args(args))
        _check_certify_domain(cfg, args)
        run_dir = Path(args.out)
        with trust:
            result = run_training(cfg, run_dir, overwrite=args.overwrite, progress=progress,
                                  final_eval=not args.no_final_eval)
    shown = {k: result[k] for k in ("natural_acc", "adversarial_acc", "certified_acc",
                                    "domain", "eps", "seconds") if k in result}
    print(json.dumps(shown))
    if "certificate_rule" in result:
        print(f"certificates: {result['certificate_rule']}")
    for t in result.get("domain_files", []):
        print(f"domain {t['domain']}: {t['trust']}, {t['file']} (sha256 {t['sha256'][:16]})")
    print(f"run folder: {run_dir}")
    return 1 if report_soundness_errors(result.get("soundness_errors") or []) else 0
