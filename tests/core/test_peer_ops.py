"""Spellings a peer's test models use (issue 21): matmul and ``F.linear`` with constant or
parameter operands (transposed, sliced), non-tensor ``forward`` arguments traced as constants,
``forward(self, *inputs)``; each sound and exact on points in every built-in domain, and the
affine ones exact (DeepPoly equals the interval of the affine map)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE, Fn, assert_sound, box
from core_helpers import assert_sound_and_exact as _sound_and_exact

import absdsl
from absdsl.domains import NAMES as DOMAINS
from absdsl.errors import TraceError


class ConstMatmul(nn.Module):
    """Every spelling of a product by a constant: x @ W.t(), torch.matmul(., W.T),
    F.linear with a sliced and twice transposed weight, .matmul with a sliced parameter,
    a buffer on the left of a per-sample matrix."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = nn.Parameter(torch.randn(4, 3, generator=g, dtype=DTYPE))
        self.V = nn.Parameter(torch.randn(5, 4, generator=g, dtype=DTYPE))
        self.b = nn.Parameter(torch.randn(6, generator=g, dtype=DTYPE))
        self.register_buffer("U", torch.randn(2, 3, generator=g, dtype=DTYPE))

    def forward(self, x: torch.Tensor) -> torch.Tensor:        # x: [B, 3]
        h = torch.relu(x @ self.W.t())                           # [B, 4]
        h = torch.tanh(torch.matmul(h, self.V.T))                # [B, 5]
        h = F.linear(h[:, :4], self.V.t()[:4, :].t()[:, :4], self.b[:5])  # [B, 5]
        h = h.matmul(self.V[:, 1:])                              # [B, 3]
        m = self.U @ x.unsqueeze(-1).expand(-1, 3, 2)            # [B, 2, 2]
        return torch.cat([h, m.flatten(1)], 1)


class Varargs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).to(DTYPE)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(inputs[0])) - inputs[0][:, :2]


class Flagged(nn.Module):
    """A debug flag, a mode string and a scale with defaults, as the peer's models have."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).to(DTYPE)

    def forward(self, x: torch.Tensor, debug: bool = False, mode: str = "relu",
                scale: float = 1.0) -> torch.Tensor:
        if debug:
            raise RuntimeError("debug path taken")
        h = self.lin(x) * scale
        return torch.relu(h) if mode == "relu" else torch.tanh(h)


@pytest.mark.parametrize("domain", DOMAINS)
def test_matmul_by_constants_sound_and_exact(domain: str) -> None:
    _sound_and_exact(ConstMatmul().eval(), domain)


def test_matmul_by_constants_are_linear_maps() -> None:
    """No product node: each spelling is an affine node, and a purely linear use is exact
    in DeepPoly (the interval of the affine map)."""
    ir = absdsl.compile(ConstMatmul(), "box", input_shape=(3,)).ir
    assert not any(n.op == "mul" for n in ir.nodes)

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.W = nn.Parameter(torch.randn(4, 3, dtype=DTYPE))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.linear(x @ self.W.t(), self.W[:, :2].t()) @ self.W[:2]

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Linear()
    lo, hi = box((3,), batch=2, eps=0.4, seed=4)
    lb, ub = absdsl.compile(model, "deeppoly")(lo, hi)
    w = (model.W.t() @ model.W[:, :2] @ model.W[:2]).detach()   # x -> x w
    c, r = (hi + lo) / 2, (hi - lo) / 2
    torch.testing.assert_close(lb, c @ w - r @ w.abs(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ub, c @ w + r @ w.abs(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("domain", ["box", "deeppoly", "zonotope"])
def test_varargs_forward_with_one_tensor(domain: str) -> None:
    _sound_and_exact(Varargs().eval(), domain)


def test_defaulted_arguments_are_traced_as_constants() -> None:
    """Defaults are taken without being named; example_kwargs picks other values (here the
    tanh branch and a scale of 2), on a copy that shares the model's parameters."""
    model = Flagged().eval()
    lo, hi = box((3,), batch=2, eps=0.2, seed=5)
    lb, ub = absdsl.compile(model, "deeppoly")(lo, hi)
    assert_sound(model, lb, ub, lo, hi)
    prog = absdsl.compile(model, "deeppoly", example_kwargs={"mode": "tanh", "scale": 2.0})
    lb2, ub2 = prog(lo, hi)
    assert "tanh" in {n.op for n in prog.ir.nodes}
    assert_sound(Fn(lambda t: model(t, mode="tanh", scale=2.0)), lb2, ub2, lo, hi)
    assert not torch.allclose(lb, lb2)
    assert set(dict(prog.params())) == {"lin.weight", "lin.bias"}
    with pytest.raises(TraceError, match="no non-input argument 'degub'"):
        absdsl.compile(model, "box", example_kwargs={"degub": True})
    with pytest.raises(TraceError, match="debug path taken|debug"):
        absdsl.compile(model, "box", input_shape=(3,), example_kwargs={"debug": True})


def test_a_second_tensor_argument_names_the_way_out() -> None:
    class Two(nn.Module):
        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return x + y

    with pytest.raises(TraceError, match="example_kwargs"):
        absdsl.compile(Two(), "box", input_shape=(3,))


class Power(nn.Module):
    """sigmoid(Linear(x)) + 0.5 raised to a real exponent (inside every power's domain, in
    every domain's bounds)."""

    def __init__(self, exponent: float) -> None:
        super().__init__()
        self.lin, self.exponent = nn.Linear(3, 3).to(DTYPE), exponent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(self.lin(x)) + 0.5) ** self.exponent


EXPONENTS = {0.5: ["sqrt"], 1.5: ["sqrt", "pow_odd"], 2.5: ["sqrt", "pow_odd"],
             -1.0: ["reciprocal"], -0.5: ["log", "affine", "exp"], -2.0: ["reciprocal", "pow"],
             0.3: ["log", "affine", "exp"], -1.7: ["log", "affine", "exp"], 0.0: []}


@pytest.mark.parametrize("exponent", sorted(EXPONENTS))
def test_real_powers_sound_and_exact_in_every_domain(exponent: float) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = Power(exponent).eval()
    ops_used = [n.op for n in absdsl.compile(model, "box", input_shape=(3,)).ir.nodes]
    want = EXPONENTS[exponent] or ["affine"]        # x ** 0: the constant 1, an affine map
    assert ops_used[-len(want):] == want, ops_used
    for domain in DOMAINS:
        _sound_and_exact(model, domain)


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_power_outside_its_domain_names_the_node_and_range(domain: str) -> None:
    from absdsl.errors import InputError

    model = nn.Sequential(nn.Linear(3, 2), Fn(lambda t: t ** 0.5)).to(DTYPE).eval()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    lo, hi = torch.full((1, 3), -0.1, dtype=DTYPE), torch.full((1, 3), 1.0, dtype=DTYPE)
    with pytest.raises(InputError) as err:
        absdsl.compile(model, domain)(lo, hi)
    msg = str(err.value)
    assert "sqrt %" in msg and "[-0.3, 3]" in msg and "[0, inf]" in msg, msg
    lb, ub = absdsl.compile(model, domain)(lo + 0.2, hi)             # inside: fine
    assert_sound(model, lb, ub, lo + 0.2, hi)
