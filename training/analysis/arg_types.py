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
