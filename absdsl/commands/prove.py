"""``absdsl prove DOMAIN_FILE``: SMT proofs of a domain file's per-neuron rules (z3).

Exit status: 0 when every rule is proved or not provable here (then tested numerically
instead), 1 when a rule is refuted (the counterexample is printed), 2 when z3 is missing or
the file is bad (file:line:col).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from absdsl.checkcache import domain_file
from absdsl.dsl.loader import BUILTIN_FILES, builtin_path
from absdsl.errors import InputError
from absdsl.prove import prove_file, require_solver


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN_FILE",
                        help="a .absd file (path or path:DomainName) or a built-in domain name")
    parser.add_argument("--timeout", type=float, default=20.0, metavar="SECONDS",
                        help="solver time per claim (default 20); past it, the rule is tested "
                             "numerically instead")


def resolve_file(spec: str) -> Path:
    """A built-in name as its shipped file; ``path:Name`` as ``path``."""

    if spec.lower() in BUILTIN_FILES:
        return builtin_path(BUILTIN_FILES[spec.lower()])
    return domain_file(spec)


def run_proofs(spec: str, timeout: float) -> tuple[bool, str]:
    """(no rule refuted, the printed report)."""

    report = prove_file(resolve_file(spec), timeout_s=timeout)
    return report.ok, report.format()


def run(args: argparse.Namespace) -> int:
    if args.timeout <= 0:
        raise InputError(f"--timeout must be > 0, got {args.timeout}")
    require_solver()
    start = time.perf_counter()
    ok, text = run_proofs(args.domain, args.timeout)
    print(text)
    print(f"({time.perf_counter() - start:.1f} s)")
    return 0 if ok else 1
