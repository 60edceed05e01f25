"""CNN7 (Shi et al.) compiles in every domain, batch norm folded.

How long compiling takes is printed by ``absdsl bench bounds`` (compile column), not timed here.
"""

from __future__ import annotations

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
def test_cnn7_compiles(domain) -> None:
    prog = absdsl.compile(cnn7(), domain, input_shape=(3, 32, 32))
    assert len([n for n in prog.ir.nodes if n.op == "relu"]) == 6
    assert not [n for n in prog.ir.nodes if n.attrs.get("batch_norm")]  # all 6 folded
    assert "def bound_program" in prog.code
