"""The full mutation run of ``absdsl check``: every mutant of tests/core/test_mutants.py.

    python benchmarks/mutants.py                 # all mutants, default check settings
    python benchmarks/mutants.py --only zono-add-sign,box-add-1%

Prints, per mutant, whether the checker flagged it (it must flag every unsound mutant and
no sound one), the property that failed and the seconds taken; then the counts and the time
per checked file. Exit status 1 when a mutant is misjudged. Single process: time it on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _table():
    spec = importlib.util.spec_from_file_location("test_mutants",
                                                  REPO / "tests" / "core" / "test_mutants.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["test_mutants"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated mutant names")
    ap.add_argument("--examples", type=int, default=50, help="check_domain max_examples")
    ap.add_argument("--shrink-seconds", type=float, default=30.0,
                    help="check_domain shrink_seconds (default 30, the default of absdsl check)")
    ap.add_argument("--kind", choices=["all", "sound", "unsound"], default="all")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from absdsl.soundness import check_domain

    table = _table()
    chosen = [m for m in table.MUTANTS if (not args.only or m.name in args.only.split(","))
              and (args.kind == "all" or m.sound == (args.kind == "sound"))]
    wrong, rows = [], []
    for m in chosen:
        with tempfile.TemporaryDirectory() as tmp:
            path = table.write_mutant(m, Path(tmp))
            start = time.perf_counter()
            # as the mutant tests: an unsound mutant is flagged at its first failing property
            report = check_domain(str(path), max_examples=args.examples,
                                  shrink_seconds=args.shrink_seconds,
                                  stop_on_failure=not m.sound)
            took = time.perf_counter() - start
        failed = [r.name.split(":")[0] + ": " + r.name.split(":")[-1][:40]
                  for r in report.results if not r.passed]
        flagged = not report.ok
        ok = flagged != m.sound
        if not ok:
            wrong.append(m.name)
        rows.append((m, flagged, took))
        verdict = "ok  " if ok else "MISS"
        print(f"{verdict} {'sound  ' if m.sound else 'unsound'} {m.name:34s} "
              f"{'flagged' if flagged else 'passed '} {took:6.1f} s  "
              f"{failed[0] if failed else ''}", flush=True)
    unsound = [r for r in rows if not r[0].sound]
    sound = [r for r in rows if r[0].sound]
    print(f"\nunsound caught: {sum(r[1] for r in unsound)} of {len(unsound)}; "
          f"sound passed: {sum(not r[1] for r in sound)} of {len(sound)}")
    for kind, group in (("unsound", unsound), ("sound", sound)):
        if group:
            times = [r[2] for r in group]
            print(f"{kind}: {min(times):.1f} to {max(times):.1f} s per file, "
                  f"mean {sum(times) / len(times):.1f} s")
    if wrong:
        print("misjudged: " + ", ".join(wrong))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
