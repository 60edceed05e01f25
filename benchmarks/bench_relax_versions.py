"""DeepPoly and CROWN-IBP on sigmoid/tanh MLPs with ``domains/relax.absd`` of several git
revisions against this tree's, in one run: time per bound call and mean bound width.

    python benchmarks/bench_relax_versions.py main f919026~1 --threads 1

Each revision's ``domains/`` files are written to a temporary folder and compiled from there
(``absdsl.compile(model, path)``), so only the domain files differ: the compiler, the engine
and the runtime are this tree's. Calls alternate between the versions, round after round, so
a change of the machine's load hits them alike; the median per version is printed with its
ratio to this tree's ("tree").
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import absdsl

ROOT = Path(__file__).resolve().parent.parent
FILES = ("relax.absd", "deeppoly.absd", "crown-ibp.absd", "box.absd")


def write_revision(rev: str, folder: Path) -> Path:
    """The domain files of ``rev`` under ``folder/rev``."""
    out = folder / rev.replace("/", "_").replace("~", "-")
    out.mkdir()
    for name in FILES:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:domains/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (out / name).write_text(text)
    return out


def mlp(act: type[nn.Module], width: int, depth: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Linear(16, width), act()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 10)).eval()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revisions", nargs="*", default=["main"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {"tree": ROOT / "domains"}
        folders |= {rev: write_revision(rev, Path(tmp)) for rev in args.revisions}
        print(f"{'model':18} {'domain':9} {'version':12} {'ms/call':>8} {'ratio':>6} "
              f"{'width':>9}")
        for act in (nn.Sigmoid, nn.Tanh):
            for width, depth in ((64, 3), (256, 2)):
                torch.manual_seed(0)
                model = mlp(act, width, depth)
                x = torch.rand(args.batch, 16)
                lo, hi = x - 0.1, x + 0.1
                for domain in ("deeppoly", "crown-ibp"):
                    progs = {v: absdsl.compile(model, str(f / f"{domain}.absd"))
                             for v, f in folders.items()}
                    times: dict[str, list[float]] = {v: [] for v in progs}
                    widths = {}
                    with torch.no_grad():
                        for v, prog in progs.items():  # trace and warm up
                            bl, bu = prog(lo, hi)
                            widths[v] = float((bu - bl).mean())
                        for _ in range(args.rounds):
                            for v, prog in progs.items():
                                start = time.perf_counter()
                                prog(lo, hi)
                                times[v].append(time.perf_counter() - start)
                    base = statistics.median(times["tree"])
                    name = f"{act.__name__.lower()} {width}x{depth}"
                    for v, ts in times.items():
                        med = statistics.median(ts)
                        print(f"{name:18} {domain:9} {v:12} {1e3 * med:8.2f} {med / base:6.2f} "
                              f"{widths[v]:9.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
