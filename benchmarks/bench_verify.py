"""Run ``absdsl verify`` over a VNN-COMP layout folder and count answers (``absdsl bench
verify`` as a script; the code is ``absdsl/experiments/bench_verify.py``).

    python benchmarks/bench_verify.py DIR [--cap S] [--answers results.csv] [--every K]
"""

from __future__ import annotations

import argparse
import sys

from absdsl.errors import AbsdslError
from absdsl.experiments.bench_verify import register, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    register(parser)
    try:
        return run(parser.parse_args(argv))
    except AbsdslError as err:
        print(f"bench_verify: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
