"""``absdsl ops``: the op table, which built-in domains bound each op, and whether a model
compiles in each domain (asked before any data exists).

    absdsl ops
    absdsl ops --model pkg.mod:factory --input-shape 3,32,32
"""

from __future__ import annotations

import argparse

import absdsl
from absdsl import domains as registry
from absdsl.commands.bounds import input_shape, load_model
from absdsl.compiler import ops
from absdsl.compiler.codegen import has_rule
from absdsl.dsl.loader import load_domain
from absdsl.errors import AbsdslError


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="module:factory, a training checkpoint (.pt) or an ONNX file: "
                             "trace it and say which built-in domains compile it")
    parser.add_argument("--weights", default=None, help="state_dict or checkpoint for the factory")
    parser.add_argument("--input-shape", default=None,
                        help="input shape without the batch axis, e.g. 3,32,32")


def support_table() -> list[tuple[str, str, str, list[str]]]:
    """(op, kind, how each built-in domain bounds it) rows: 'rule', 'lowered' or '-'."""

    loaded = [load_domain(name) for name in registry.NAMES]
    rows = []
    for op in ops.OPS.values():
        if op.kind in ("input", "affine", "add", "cat", "reshape"):
            cells = ["rule"] * len(loaded)
        else:
            cells = ["rule" if has_rule(d, op.name) else
                     ("lowered" if op.kind == "pool" else "-") for d in loaded]
        rows.append((op.name, op.kind, "yes" if op.piecewise_linear else "no", cells))
    return rows


def run(args: argparse.Namespace) -> int:
    if args.model is None:
        names = list(registry.NAMES)
        print(f"{'op':12} {'kind':11} {'MILP':5} " + " ".join(f"{n:10}" for n in names))
        for op, kind, pl, cells in support_table():
            print(f"{op:12} {kind:11} {pl:5} " + " ".join(f"{c:10}" for c in cells))
        print("\nrule: the domain has a rule (or relaxation) for it; lowered: rewritten into "
              "ops it has rules for (compiler/lowering.py). MILP: piecewise linear.")
        return 0
    model, ck_shape = load_model(args.model, args.weights)
    shape = input_shape(args.input_shape, ck_shape)
    failed = 0
    for name in registry.NAMES:
        try:
            absdsl.compile(model, name, input_shape=shape)
            print(f"{name:10} compiles")
        except AbsdslError as err:
            failed += 1
            print(f"{name:10} no: {err}")
    return 1 if failed == len(registry.NAMES) else 0
