"""``absdsl check DOMAIN_FILE``: property-test a domain for soundness (absdsl.soundness)."""

from __future__ import annotations

import argparse
import time


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("domain", metavar="DOMAIN_FILE",
                        help="a .absd file (path or path:DomainName) or a built-in domain name")
    parser.add_argument("--examples", type=int, default=50,
                        help="Hypothesis examples per property (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--shrink-seconds", type=float, default=30.0,
                        help="time cap on shrinking a counterexample (default 30)")
    parser.add_argument("--property", action="append", dest="properties",
                        choices=["bounds", "spec", "relaxations"],
                        help="check only this property (repeatable; default all)")


def run(args: argparse.Namespace) -> int:
    from absdsl.errors import InputError
    from absdsl.soundness import check_domain

    if args.examples < 1:
        raise InputError(f"--examples must be at least 1, got {args.examples}")
    props = tuple(args.properties) if args.properties else ("bounds", "spec", "relaxations")
    start = time.perf_counter()
    report = check_domain(args.domain, max_examples=args.examples, seed=args.seed,
                          properties=props, shrink_seconds=args.shrink_seconds)
    print(report.format())
    print(f"({time.perf_counter() - start:.1f} s, seed {args.seed})")
    return 0 if report.ok else 1
