"""Time and peak memory of bound programs vs a forward pass (``absdsl bench bounds``).

    python benchmarks/bench_bounds.py [--quick] [--table a|b|both] [--json PATH] ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from absdsl.experiments.bench_bounds import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
