"""prog.functional under torch.func.vmap equals separate calls; gradients reach parameters."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box, mlp

import absdsl

DOMAINS = ["box", "zonotope", "deeppoly", "crown-ibp"]


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3, stride=2, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 3)
                         ).to(DTYPE).eval()


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_vmap_over_parameter_sets_equals_separate_calls(domain, kind) -> None:
    model = mlp([4, 6, 5, 3], seed=0) if kind == "mlp" else small_cnn()
    shape = (4,) if kind == "mlp" else (1, 4, 4)
    lo, hi = box(shape, batch=2, eps=0.2, seed=1)
    C = absdsl.margin_spec(torch.tensor([0, 2]), 3).to(DTYPE)
    prog = absdsl.compile(model, domain)
    base = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(2)
    stacked = {k: v.unsqueeze(0) + 0.1 * torch.randn((8, *v.shape), generator=g, dtype=DTYPE)
               for k, v in base.items()}
    lb_v, ub_v = torch.func.vmap(lambda p: prog.functional(p, lo, hi, C))(stacked)
    assert lb_v.shape == (8, 2, 2)
    for i in range(8):
        lb, ub = prog.functional({k: v[i] for k, v in stacked.items()}, lo, hi, C)
        torch.testing.assert_close(lb_v[i], lb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub, rtol=1e-10, atol=1e-10)
    # the members differ (the test would pass trivially if params were ignored)
    assert (lb_v[0] - lb_v[1]).abs().max() > 1e-6


class ResidualCat(nn.Module):
    """A residual add whose two branches are then concatenated: generator blocks of the same
    origin meet in ``rt.cat``, which must not choose generators by value under vmap."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(5, 5), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        r = torch.relu(self.b(h)) + h
        return self.c(torch.cat([r, h], 1))


@pytest.mark.parametrize("domain", DOMAINS + ["hbox"])
def test_vmap_through_residual_and_cat_equals_separate_calls(domain) -> None:
    torch.manual_seed(0)
    model = ResidualCat().to(DTYPE).eval()
    lo, hi = box((4,), batch=2, eps=0.3, seed=5)
    C = absdsl.margin_spec(torch.tensor([0, 2]), 3).to(DTYPE)
    prog = absdsl.compile(model, domain)
    g = torch.Generator().manual_seed(6)
    stacked = {k: v.detach().unsqueeze(0) + 0.05 * torch.randn((3, *v.shape), generator=g,
                                                                dtype=DTYPE)
               for k, v in model.named_parameters()}
    lb_v, ub_v = torch.func.vmap(lambda p: prog.functional(p, lo, hi, C))(stacked)
    for i in range(3):
        one = {k: v[i] for k, v in stacked.items()}
        lb, ub = prog.functional(one, lo, hi, C)
        torch.testing.assert_close(lb_v[i], lb, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub, rtol=1e-10, atol=1e-10)
        # and the plain call with those weights (compacted generators) gives the same bounds
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(one[name])
        lb_c, ub_c = prog(lo, hi, spec=C)
        torch.testing.assert_close(lb_v[i], lb_c, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(ub_v[i], ub_c, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("domain", DOMAINS + ["hbox"])
def test_functional_with_model_params_equals_call(domain) -> None:
    model = small_cnn()
    lo, hi = box((1, 4, 4), batch=2, eps=0.2, seed=3)
    prog = absdsl.compile(model, domain)
    a = prog(lo, hi)
    b = prog.functional(dict(model.named_parameters()), lo, hi)
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("domain", DOMAINS + ["hbox"])
def test_gradients_reach_parameters(domain) -> None:
    model = small_cnn()
    lo, hi = box((1, 4, 4), batch=2, eps=0.2, seed=4)
    lb, ub = absdsl.compile(model, domain)(lo, hi)
    lb.sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
    assert all(float(p.grad.abs().sum()) > 0 for n, p in model.named_parameters()
               if n.startswith(("0.", "4.", "6."))), {
        n: float(p.grad.abs().sum()) for n, p in model.named_parameters()}


def test_gradient_matches_finite_difference_box() -> None:
    model = mlp([3, 4, 2], seed=7)
    lo, hi = box((3,), batch=1, eps=0.1, seed=7)
    prog = absdsl.compile(model, "box")
    lb, _ = prog(lo, hi)
    lb.sum().backward()
    w = model[2].weight
    h = 1e-6
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    params["2.weight"][0, 0] += h
    lb2, _ = prog.functional(params, lo, hi)
    fd = float(lb2.sum() - lb.detach().sum()) / h
    assert fd == pytest.approx(float(w.grad[0, 0]), rel=1e-4, abs=1e-6)
