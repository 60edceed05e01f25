"""Shared helpers for the training tests: tiny runs on the embedded mnist5k digits."""

from __future__ import annotations

import pytest


def _tiny(**overrides):
    """A resolved config for a run of a few seconds (256 train / 100 test digits)."""
    from absdsl.training.config import resolve

    base = dict(
        dataset="mnist5k", model="cnn3", domain="box", eps=0.1, epochs=2, batch_size=64,
        lr=1e-3, warmup_epochs=0, ramp_epochs=1, train_subset=256, test_subset=100,
        eval_every=0, pgd_steps=2, eval_pgd_steps=2, eval_pgd_restarts=1,
    )
    base.update(overrides)
    return resolve(base)


@pytest.fixture
def tiny():
    """The factory of tiny configs: ``tiny(epochs=1, domain="hbox")``."""
    return _tiny
