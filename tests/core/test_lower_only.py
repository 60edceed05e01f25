"""What the GRAD step skips: upper rows of the output, the zero margin row, and the
back-substitution of neurons whose Box bounds are already exact. Each skip must leave the
bounds the loss reads unchanged."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box

import absdsl
from absdsl.compiler.specs import margin_spec_full
from absdsl.training.objective import margin_lower


class Normalised(nn.Module):
    """Normalisation (elementwise), then conv, ReLU, conv, ReLU, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, stride=1, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.3) / 0.7
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.flatten(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return Normalised().to(DTYPE).eval()


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp", "box"])
def test_lower_only_equals_the_lower_half(domain: str) -> None:
    model = _model()
    lo, hi = box((1, 8, 8), batch=3, eps=0.3, seed=1)
    y = torch.tensor([0, 4, 2])
    spec = margin_spec_full(y, 5).to(DTYPE)
    prog = absdsl.compile(model, domain)
    lb, ub = prog(lo, hi, spec=spec)
    lower, none = prog(lo, hi, spec=spec, upper=False)
    assert none is None  # equal up to the summation order of smaller products
    torch.testing.assert_close(lower, lb, rtol=1e-12, atol=1e-12)
    assert (ub - lb).min() >= 0 and (ub - lb).max() > 1e-3  # the upper half was not trivial
    lower, none = prog(lo, hi, upper=False)
    assert none is None
    torch.testing.assert_close(lower, prog(lo, hi)[0], rtol=1e-12, atol=1e-12)
    lower, none = prog.functional({}, lo, hi, spec, upper=False)
    assert none is None
    torch.testing.assert_close(lower, lb, rtol=1e-12, atol=1e-12)
    # the loss's margins: n - 1 rows bounded, the label's entry exactly 0
    m = margin_lower(prog, None, lo, hi, y, 5)
    torch.testing.assert_close(m, lb, rtol=1e-12, atol=1e-12)
    assert torch.equal(m.gather(1, y.unsqueeze(1)), torch.zeros(3, 1, dtype=DTYPE))


def test_exact_box_neurons_are_not_back_substituted() -> None:
    """Behind normalisation, the first conv's Box bounds are exact: DeepPoly keeps them
    (no back-substitution function for that node) and refines the second conv."""
    model = _model()
    prog = absdsl.compile(model, "deeppoly")
    lo, hi = box((1, 8, 8), batch=2, eps=0.3, seed=2)
    inter = prog.intermediate_bounds(lo, hi)
    first, second = list(inter)
    assert f"backsub_patches_{first}" not in prog.code and f"backsub_{first}(" not in prog.code
    assert f"backsub_patches_{second}" in prog.code or f"backsub_{second}(" in prog.code
    ibp = absdsl.compile(model, "box").intermediate_bounds(lo, hi)
    torch.testing.assert_close(inter[first][0], ibp[first][0], rtol=0, atol=0)
    # the exactness claim itself: back-substituting the first conv gives Box's bounds
    w = model.c1.weight.detach()
    scale = 1 / 0.7
    centre = ((lo + hi) / 2 - 0.3) * scale
    radius = (hi - lo) / 2 * scale
    mid = torch.nn.functional.conv2d(centre, w, model.c1.bias.detach(), 2, 1)
    spread = torch.nn.functional.conv2d(radius, w.abs(), None, 2, 1)
    torch.testing.assert_close(inter[first][0], mid - spread, rtol=1e-12, atol=1e-12)
    assert float((inter[second][0] - ibp[second][0]).max()) > 1e-6
