"""The IR as concrete functions, and the pre-activation bounds programs expose."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import absdsl
from absdsl.errors import InputError


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(48 + 16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - 0.1) / 0.3
        a = torch.relu(self.bn(self.conv(x)))
        b = torch.relu(self.conv2(a)) + a
        return self.fc(torch.cat([b.flatten(1), x.flatten(1)], 1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    m = _Residual().eval()
    m.bn.running_mean.uniform_(-0.5, 0.5)
    m.bn.running_var.uniform_(0.5, 2.0)
    return m


def test_forward_matches_the_model_and_matrices_match_the_nodes() -> None:
    model = _model()
    x = torch.rand(3, 1, 4, 4)
    cg = absdsl.compile(model, domain="box").concrete((1, 4, 4))
    values = cg.forward(x)
    torch.testing.assert_close(values[cg.graph.output], model(x), atol=1e-5, rtol=1e-5)
    affine = [n for n in cg.graph.nodes if n.op == "affine"]
    assert len(affine) >= 3
    for node in affine:
        w, b = cg.affine_matrix(node.name)
        got = values[node.inputs[0]].flatten(1) @ w.T + b
        torch.testing.assert_close(got, values[node.name].flatten(1), atol=1e-5, rtol=1e-5)
        abs_out = cg.node_fn(node.name)(values[node.inputs[0]], absolute=True)
        expected = values[node.inputs[0]].flatten(1) @ w.abs().T
        torch.testing.assert_close(abs_out.flatten(1), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="not an affine node"):
        cg.affine_matrix(cg.graph.output if cg.graph.by_name[cg.graph.output].op != "affine"
                         else cg.graph.nodes[0].name)


@pytest.mark.parametrize("domain", ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"])
def test_intermediate_bounds_contain_every_sampled_point(domain: str) -> None:
    model = _model()
    x = torch.rand(2, 1, 4, 4)
    lo, hi = x - 0.05, x + 0.05
    prog = absdsl.compile(model, domain=domain)
    bounds = prog.intermediate_bounds(lo, hi)
    cg = prog.concrete()
    pre_activation = {n.inputs[0] for n in cg.graph.nodes if n.op == "relu"}
    assert set(bounds) == pre_activation
    for _ in range(20):
        values = cg.forward(lo + (hi - lo) * torch.rand_like(x))
        for name, (lb, ub) in bounds.items():
            assert lb.shape == values[name].shape
            assert (values[name] >= lb - 1e-5).all() and (values[name] <= ub + 1e-5).all()


def test_deeppoly_intermediate_bounds_refine_box() -> None:
    model = _model()
    x = torch.rand(2, 1, 4, 4)
    box = absdsl.compile(model, domain="box").intermediate_bounds(x - 0.1, x + 0.1)
    poly = absdsl.compile(model, domain="deeppoly").intermediate_bounds(x - 0.1, x + 0.1)
    widths = []
    for name in box:
        assert (poly[name][0] >= box[name][0] - 1e-6).all()
        assert (poly[name][1] <= box[name][1] + 1e-6).all()
        widths.append(((box[name][1] - box[name][0]) - (poly[name][1] - poly[name][0])).sum())
    assert max(widths) > 0  # strictly tighter somewhere: the second conv is refined


class _PoolAndConstants(nn.Module):
    """Average pooling (its prelude makes the pooling weights like the input box) and a
    concatenation with a constant token (its prelude makes zeros like the box)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.pool = nn.AvgPool2d(2)
        self.token = nn.Parameter(torch.randn(1, 3))
        self.fc = nn.Linear(8 + 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.fc(torch.cat([z, self.token.expand(x.shape[0], 3)], 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concrete_graph_of_a_model_with_average_pooling(dtype: torch.dtype) -> None:
    """Regression: the prelude of average pooling reads the input box's dtype and device, which
    the concrete functions once did not define (``NameError: lo``)."""
    torch.manual_seed(0)
    model = _PoolAndConstants().to(dtype).eval()
    prog = absdsl.compile(model, domain="box", input_shape=(1, 4, 4))
    cg = prog.concrete()
    prelude = "\n".join(pre.code for pre in cg.graph.prelude)
    assert "like=lo" in prelude and "dtype=lo.dtype" in prelude  # both read the box
    x = torch.rand(3, 1, 4, 4, dtype=dtype)
    values = cg.forward(x)
    assert values[cg.graph.output].dtype == dtype
    torch.testing.assert_close(values[cg.graph.output], model(x))
    pooled = next(n for n in cg.graph.nodes if n.op == "affine" and "AvgPool2d" in n.describe())
    w, b = cg.affine_matrix(pooled.name)
    assert w.dtype == dtype
    got = values[pooled.inputs[0]].flatten(1) @ w.T + b
    torch.testing.assert_close(got, values[pooled.name].flatten(1))
