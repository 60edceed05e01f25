"""Suite-wide options: run the tests in another order to show none depends on what ran before.

    python -m pytest -q --test-order reverse
    python -m pytest -q --test-order shuffle:1234

Every test must pass in any order (the determinism of ``absdsl check`` included); these
options are how that is checked without a plugin.
"""

from __future__ import annotations

import random

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--test-order", default="forward", metavar="ORDER",
                     help="forward (default), reverse, or shuffle:SEED")


def _parse_order(text: str) -> tuple[str, int]:
    if text in ("forward", "reverse"):
        return text, 0
    kind, _, seed = text.partition(":")
    if kind == "shuffle" and seed.lstrip("-").isdigit():
        return kind, int(seed)
    raise pytest.UsageError(f"--test-order: expected forward, reverse or shuffle:SEED, got "
                            f"{text!r}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kind, seed = _parse_order(config.getoption("--test-order"))
    if kind == "reverse":
        items.reverse()
    elif kind == "shuffle":
        random.Random(seed).shuffle(items)
