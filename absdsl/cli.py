"""The ``absdsl`` command line: a thin dispatcher over subcommand modules.

Each subcommand lives next to the code it drives and exposes two functions:
``register(parser)`` adds its arguments and ``run(args) -> int`` does the work.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from absdsl.cpu_memory import apply_default as keep_freed_memory_by_default
from absdsl.errors import AbsdslError

# (command, module, one-line help). "bench X" commands are nested under "bench".
COMMANDS: list[tuple[str, str, str]] = [
    ("bounds", "absdsl.commands.bounds", "print bounds of a model on an input for a domain"),
    ("check", "absdsl.commands.check", "property-test a domain file for soundness"),
    ("prove", "absdsl.commands.prove", "prove a domain file's per-neuron rules sound (z3)"),
    ("ir", "absdsl.commands.ir", "print the IR and the generated program of a model"),
    ("ops", "absdsl.commands.ops", "the op table, and which domains compile a model"),
    ("train", "absdsl.training.cli_train", "certified training (GRAD, PGPE, RGS)"),
    ("certify", "absdsl.training.cli_certify", "natural, adversarial and certified accuracy"),
    ("analyze", "absdsl.training.analysis.cli", "tightness and loss-landscape analysis"),
    ("paradox", "absdsl.experiments.paradox", "the paradox experiment: GRAD vs PGPE per domain"),
    ("export", "absdsl.commands.export", "write a trained run as ONNX, checked by onnxruntime"),
    ("verify", "absdsl.commands.verify", "decide a VNN-LIB property on an ONNX network"),
]
BENCHES: list[tuple[str, str, str]] = [
    ("bounds", "absdsl.experiments.bench_bounds",
     "time and memory of bound programs vs a forward pass"),
    ("train", "absdsl.experiments.bench_train", "epoch time per domain vs a standard epoch"),
    ("pgpe", "absdsl.experiments.bench_pgpe", "PGPE generation time: batched vs member by member"),
    ("verify", "absdsl.experiments.bench_verify",
     "absdsl verify over a VNN-COMP folder: answers, wrong"),
]


def _load(module_name: str):
    """Import a subcommand module; a module not written yet is left out of the CLI."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is not None and module_name.startswith(err.name):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="absdsl", description="Certified training with abstract domains written in a DSL."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_commands(sub, COMMANDS)
    bench = sub.add_parser("bench", help="benchmarks that print ratios measured in one run")
    _add_commands(bench.add_subparsers(dest="bench", metavar="BENCH"), BENCHES)
    return parser


def _add_commands(sub, table: list[tuple[str, str, str]]) -> None:
    for name, module_name, help_text in table:
        module = _load(module_name)
        if module is None:
            continue
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        module.register(cmd)
        cmd.set_defaults(run=module.run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    keep_freed_memory_by_default()  # the command's process: freed tensors stay mapped

    try:
        return int(run(args) or 0)
    except AbsdslError as err:
        print(f"absdsl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"absdsl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
