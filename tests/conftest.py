"""Suite-wide options: run the tests in another order to show none depends on what ran before.

    python -m pytest -q --test-order reverse
    python -m pytest -q --test-order shuffle:1234

Every test must pass in any order (the determinism of ``absdsl check`` included); these
options are how that is checked without a plugin.

Torch runs one intra-op thread per test process (``ABSDSL_TEST_THREADS=N`` changes it): the
suite's tensors are small, and on a loaded machine a second thread spins for a core it does
not get (the CPU time of ``tests/zoo/test_runtime_contract.py`` was 28 s with two threads and
18 s with one). A whole-suite run already got one thread from ``tests/core/test_cpu_memory.py``
at collection; this makes a run of one folder the same. With pytest-xdist (``-n auto``) each
worker is its own process with one thread.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

TEST_THREADS = int(os.environ.get("ABSDSL_TEST_THREADS", "1"))


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(TEST_THREADS)


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
