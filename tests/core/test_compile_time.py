"""CNN7 (Shi et al.) compiles in under a second."""

from __future__ import annotations

import time

import pytest
import torch.nn as nn

import absdsl


def cnn7() -> nn.Sequential:
    def block(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*block(3, 64, 1), *block(64, 64, 1), *block(64, 128, 2),
                         *block(128, 128, 1), *block(128, 128, 1), nn.Flatten(),
                         nn.Linear(128 * 16 * 16, 512), nn.BatchNorm1d(512), nn.ReLU(),
                         nn.Linear(512, 10)).eval()


@pytest.mark.parametrize("domain", ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"])
def test_cnn7_compiles_under_one_second(domain) -> None:
    model = cnn7()
    absdsl.compile(nn.Sequential(nn.Linear(2, 2)).eval(), domain, input_shape=(2,))  # warm
    start = time.perf_counter()
    prog = absdsl.compile(model, domain, input_shape=(3, 32, 32))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"{domain}: {elapsed:.3f} s"
    assert len([n for n in prog.ir.nodes if n.op == "relu"]) == 6
