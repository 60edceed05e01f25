"""``absdsl check DOMAIN_FILE``: prove what can be proved (z3, when installed), then
property-test the domain for soundness (absdsl.soundness). A file that passes is recorded in
the check cache (absdsl.checkcache), which certification requires of domains that are not
built in."""

from __future__ import annotations

import argparse
import time

from absdsl.checkcache import cache_path, domain_file, record_pass
from absdsl.commands.prove import run_proofs
from absdsl.dsl.loader import BUILTIN_FILES, load_domain
from absdsl.errors import InputError
from absdsl.prove import solver_available

# absdsl.soundness.DEFAULT_PROPERTIES (tested equal; not imported here, since that module
# loads torch and Hypothesis and --help must stay fast); continuity is opt-in
PROPERTIES = ("rules", "bounds", "spec", "engine", "relaxations")
CHOICES = PROPERTIES + ("continuity",)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN_FILE",
                        help="a .absd file (path or path:DomainName) or a built-in domain name")
    parser.add_argument("--examples", type=int, default=50,
                        help="Hypothesis examples per property (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shrink-seconds", type=float, default=30.0,
                        help="time cap on shrinking a counterexample (default 30)")
    parser.add_argument("--property", action="append", dest="properties",
                        choices=list(CHOICES),
                        help="check only this property (repeatable; default all)")
    parser.add_argument("--no-prove", action="store_true",
                        help="skip the SMT proofs (absdsl prove) that run first when z3 is "
                             "installed")
    parser.add_argument("--prove-timeout", type=float, default=20.0, metavar="SECONDS",
                        help="solver time per claim (default 20)")


def run(args: argparse.Namespace) -> int:
    # lazy: heavy dependency hypothesis (absdsl.soundness), off the CLI start
    from absdsl.soundness import check_domain

    if args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    if args.prove_timeout <= 0:
        raise InputError(f"--prove-timeout must be > 0, got {args.prove_timeout}")
    props = tuple(args.properties) if args.properties else PROPERTIES
    load_domain(args.domain)  # syntax and type errors (file:line:col) before any test runs
    start = time.perf_counter()
    proved = "skipped (--no-prove)" if args.no_prove else "z3 not installed"
    proofs_ok = True
    if not args.no_prove and solver_available():
        proofs_ok, text = run_proofs(args.domain, args.prove_timeout)
        print(text)
        proved = "no rule refuted" if proofs_ok else "refuted"
        if not proofs_ok:  # the tests still run: they show a whole network it fails on
            print("a rule is refuted; the property tests follow")
    elif not args.no_prove:
        print("proofs skipped: z3 is not installed (pip install z3-solver)")
    report = check_domain(args.domain, max_examples=args.examples, seed=args.seed,
                          properties=props, shrink_seconds=args.shrink_seconds)
    print(report.format())
    print(f"({time.perf_counter() - start:.1f} s, seed {args.seed})")
    ok = report.ok and proofs_ok
    if not proofs_ok:
        print("FAILED: a rule is refuted by the proofs above")
    builtin = args.domain.lower() in BUILTIN_FILES
    if ok and not builtin and set(PROPERTIES) <= set(props):
        record_pass(domain_file(args.domain), {
            "examples": args.examples, "seed": args.seed, "properties": list(props),
            "proofs": proved})
        print(f"recorded as checked in {cache_path()}")
    return 0 if ok else 1
