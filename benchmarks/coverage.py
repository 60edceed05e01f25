"""Coverage of the model zoo (``tests/zoo/models.py``): which models compile in which domain.

For every model and built-in domain: ``absdsl.compile(model, domain, input_shape=...)``; a
``TraceError`` is reported by the op it names, anything else as a crash. A compiled program is
called once at batch 2 (an eps box around a random input and a degenerate box, float32,
eps 0.01) and reported ``ok`` only if its bounds hold at sampled points of the box and equal
``model(x)`` on the degenerate box (``tests/zoo/test_zoo.py`` pins the same matrix); the
``HEAVY`` cases (HBox, Zonotope, DeepPoly on torchvision classics) are only compiled unless
``--heavy``. The last column is the time of that one DeepPoly call where it ran.

    python benchmarks/coverage.py [--models a,b] [--domains box,deeppoly] [--heavy] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import absdsl  # noqa: E402
from absdsl import cpu_memory  # noqa: E402
from tests.zoo.models import (  # noqa: E402
    BATCH,
    BY_NAME,
    DOMAINS,
    EPS,
    HEAVY,
    ZOO,
    ZooModel,
    build,
    check_program,
    refused_op,
)


@dataclass
class Cell:
    """One (model, domain) outcome: ``ok``, ``compiles`` (a ``HEAVY`` case, not called),
    ``refused`` (TraceError), ``crash`` (any other error), ``unsound``, ``inexact`` or
    ``non-finite``."""

    model: str
    tag: str
    input_shape: tuple[int, ...]
    domain: str
    status: str
    op: str = ""
    message: str = ""
    compile_s: float | None = None
    call_s: float | None = None
    violation: float | None = None
    exact_error: float | None = None

    def text(self) -> str:
        """The table cell: ``ok``, the refusing op in backquotes, or the failure."""
        if self.status == "ok":
            return "ok"
        if self.status == "compiles":
            return "compiles (not run)"
        if self.status == "refused":
            return f"`{self.op}`"
        if self.status == "crash":
            return f"**crash** ({self.op})"
        return f"**{self.status}**"


def run_cell(entry: ZooModel, model: torch.nn.Module, domain: str, heavy: bool = False
             ) -> Cell:
    """Compile ``model`` in ``domain`` and, if it compiles, check one call (not for a
    ``HEAVY`` case unless ``heavy``: its status is then ``compiles``)."""
    cell = Cell(entry.name, entry.tag, entry.input_shape, domain, "ok")
    start = time.perf_counter()
    try:
        prog = absdsl.compile(model, domain, input_shape=entry.input_shape)
        cell.compile_s = time.perf_counter() - start
        if (entry.name, domain) in HEAVY and not heavy:
            cell.status = "compiles"
            return cell
        check = check_program(model, prog, entry)
    except absdsl.TraceError as err:
        cell.status, cell.message, cell.op = "refused", str(err), refused_op(str(err))
        return cell
    except Exception as err:  # noqa: BLE001 - a crash is what this column reports
        cell.status, cell.message, cell.op = "crash", f"{type(err).__name__}: {err}", \
            type(err).__name__
        return cell
    cell.call_s, cell.violation, cell.exact_error = check.call_s, check.violation, \
        check.exact_error
    if not check.finite:
        cell.status = "non-finite"
    elif check.violation > check.tol:
        cell.status = "unsound"
    elif check.exact_error > check.tol:
        cell.status = "inexact"
    return cell


def table(cells: list[Cell], domains: tuple[str, ...]) -> str:
    """The markdown table: model x domain, and the DeepPoly call time."""
    head = ["model", "tag", "input", *domains, "DeepPoly call (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    by_model: dict[str, dict[str, Cell]] = {}
    for c in cells:
        by_model.setdefault(c.model, {})[c.domain] = c
    for name, row in by_model.items():
        first = next(iter(row.values()))
        dp = row.get("deeppoly")
        timing = f"{dp.call_s:.2f}" if dp is not None and dp.status == "ok" and dp.call_s else ""
        shape = "x".join(map(str, first.input_shape))
        cols = [row[d].text() if d in row else "" for d in domains]
        lines.append("| " + " | ".join([name, first.tag, shape, *cols, timing]) + " |")
    counts = [f"{d} {sum(c.status == 'ok' for c in cells if c.domain == d)}" for d in domains]
    lines.append("")
    lines.append(f"{len(by_model)} models; compile and check ok: " + ", ".join(counts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated zoo names (all)")
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help=f"comma-separated domains ({','.join(DOMAINS)})")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2)")
    parser.add_argument("--heavy", action="store_true",
                        help="also call the HEAVY cases (minutes each, GBs of memory)")
    parser.add_argument("--json", type=Path, default=None, help="also write the cells here")
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    names = [n for n in args.models.split(",") if n] or [m.name for m in ZOO]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown models {unknown}; the zoo has {sorted(BY_NAME)}")
    domains = tuple(d for d in args.domains.split(",") if d)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    cells: list[Cell] = []
    try:
        for name in names:
            entry = BY_NAME[name]
            model = build(entry)
            for domain in domains:
                cell = run_cell(entry, model, domain, args.heavy)
                cells.append(cell)
                print(f"{name} {domain}: {cell.text()}", file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(threads)  # main() is also called from the tests
    print(table(cells, domains))
    if args.json is not None:
        meta = {"torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "threads": args.threads, "batch": BATCH,
                "eps": EPS, "dtype": "float32"}
        args.json.write_text(json.dumps({"meta": meta, "cells": [asdict(c) for c in cells]},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
