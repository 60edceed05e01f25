"""Argument types shared by the ``absdsl analyze`` subcommands: comma-separated lists."""

from __future__ import annotations

import argparse


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") \
            from err


def names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def add_population_options(p: argparse.ArgumentParser) -> None:
    """--inputs, --eps, --memory-budget and --seed of the population-evaluating analyses."""
    p.add_argument("--inputs", type=int, default=32,
                   help="the loss is over the first N test inputs (default 32)")
    p.add_argument("--eps", type=float, default=None, help="radius (default: the run's)")
    p.add_argument("--memory-budget", type=float, default=1024.0, metavar="MIB",
                   help="MiB one vmapped population call may use (default 1024)")
    p.add_argument("--seed", type=int, default=0)
