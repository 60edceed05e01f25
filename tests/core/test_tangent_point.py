"""The tangent points of relaxations (``tangent_above`` / ``tangent_below`` in the DSL,
``rt.tangent_point`` in programs): where they lie, that they never fall short of the exact
point, how the DSL checker and the prover treat them, and the S-shaped relaxation built on
them as tight as a reference CROWN with exact tangent points."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import absdsl
from absdsl.compiler import ops
from absdsl.compiler import runtime as rt
from absdsl.errors import DSLError
from absdsl.prove import prove_file, solver_available

S_SHAPED = {
    "sigmoid": (torch.sigmoid, lambda t: torch.sigmoid(t) * (1 - torch.sigmoid(t))),
    "tanh": (torch.tanh, lambda t: 1 - torch.tanh(t) ** 2),
    "arctan": (torch.arctan, lambda t: 1 / (1 + t * t)),
    "softsign": (F.softsign, lambda t: 1 / (1 + t.abs()) ** 2),
}


def _exact_point(f, df, p: torch.Tensor) -> torch.Tensor:
    """The tangent point d >= 0 whose tangent passes through (p, f(p)), p < 0, by 200 halvings
    in float64 (the smallest d whose tangent passes above)."""
    lo, hi = torch.zeros_like(p), -p.clone()
    for _ in range(200):
        mid = (lo + hi) / 2
        above = f(mid) + df(mid) * (p - mid) >= f(p)
        hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
    return hi


@pytest.mark.parametrize("name", sorted(S_SHAPED))
def test_tangent_point_is_checked_never_short_and_near_the_exact_point(name: str) -> None:
    """Far ends from -0.01 to -1000 (tanh's point for -300 is near 3.2, the search bracket
    [0, 300]): the point lies in the bracket, its tangent passes above (p, f(p)), it is not
    short of the exact point and within 1e-3 of it (relative); the mirror image below."""
    f, df = S_SHAPED[name]
    p = -torch.logspace(-2, 3, 400, dtype=torch.float64)
    exact = _exact_point(f, df, p)
    d = rt.tangent_point(f=f, df=df, p=p, tight=torch.zeros_like(p), safe=-p, above=True)
    assert bool(((d >= 0) & (d <= -p)).all())
    assert bool((f(d) + df(d) * (p - d) >= f(p)).all())
    assert bool((d >= exact * (1 - 1e-8)).all())  # float64 rounding of the check itself
    assert float(((d - exact) / exact).max()) < 1e-3
    below = rt.tangent_point(f=f, df=df, p=-p, tight=torch.zeros_like(p), safe=p, above=False)
    assert bool((f(below) + df(below) * (-p - below) <= f(-p)).all())
    assert float(((-below - exact) / exact).abs().max()) < 1e-3


def test_a_tight_end_that_passes_is_the_answer_and_no_gradient_is_followed() -> None:
    """On [1, 3] with p = 0.5, tanh is concave and the tangent at 1 already passes above
    (0.5, tanh 0.5): the answer is 1 itself. The point is held fixed under autograd."""
    p = torch.tensor([0.5], dtype=torch.float64, requires_grad=True)
    tight, safe = torch.tensor([1.0], dtype=torch.float64), torch.tensor([3.0], dtype=torch.float64)
    d = rt.tangent_point(f=torch.tanh, df=S_SHAPED["tanh"][1], p=p, tight=tight, safe=safe,
                         above=True)
    assert float(d) == 1.0 and not d.requires_grad


def test_tangent_point_runs_under_vmap() -> None:
    f, df = S_SHAPED["tanh"]
    p = -torch.rand(3, 5, dtype=torch.float64) * 4 - 0.1

    def one(row: torch.Tensor) -> torch.Tensor:
        return rt.tangent_point(f=f, df=df, p=row, tight=torch.zeros_like(row), safe=-row,
                                above=True)

    batched = torch.func.vmap(one)(p)
    assert torch.equal(batched, torch.stack([one(row) for row in p]))


_DOMAIN = """relax sigmoid(x; l, u) {{
  else: lower f(l), upper {upper}
}}
domain D {{ bounds backsub  output backsub }}
"""


def _write(tmp_path: Path, upper: str) -> Path:
    path = tmp_path / "tp.absd"
    path.write_text(_DOMAIN.format(upper=upper))
    return path


def test_the_checker_names_a_wrong_use(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sigmoid())
    with pytest.raises(DSLError) as err:
        absdsl.compile(net, str(_write(tmp_path, "f(tangent_above(l, u))")), input_shape=(2,))
    assert "tangent_above takes 3 arguments" in str(err.value) and "tp.absd:2:" in str(err.value)
    bad = tmp_path / "rule.absd"
    bad.write_text("domain B {\n  state { l: bound; u: bound }\n  gamma { l <= x <= u }\n"
                   "  rule input { l = lo; u = hi }\n"
                   "  rule affine { l = W @ l + b; u = tangent_below(l, u, u) }\n}\n")
    with pytest.raises(DSLError) as err:
        absdsl.compile(net, str(bad), input_shape=(2,))
    assert "tangent_below exists only in activation rules and relaxations" in str(err.value)


def test_the_prover_says_why_it_cannot_decide_a_tangent_point(tmp_path: Path) -> None:
    """Whether a tangent point's line is sound follows from f's curvature, which the prover
    does not know: the case is not provable, and the report says why."""
    assert solver_available(), "pip install z3-solver (in the dev extra) to run the proof tests"
    upper = "f(u) + 0 * tangent_above(l, 0, u)"
    report = prove_file(_write(tmp_path, upper))
    res = next(r for r in report.results if r.name == "relax sigmoid else")
    assert res.status == "not provable here" and "tangent point" in res.detail


def test_inflection_is_for_ops_that_list_them(tmp_path: Path) -> None:
    """sin's inflection points are k pi (the one nearest the argument); sigmoid lists none,
    and a relaxation asking for it fails at load, naming the op and the place."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sigmoid())
    with pytest.raises(DSLError) as err:
        absdsl.compile(net, str(_write(tmp_path, "f(u) + 0 * inflection(u)")), input_shape=(2,))
    assert "op sigmoid lists no inflection points" in str(err.value)
    assert "tp.absd:2:" in str(err.value)
    nearest = ops.get("sin").inflection
    assert nearest is not None
    x = torch.tensor([-4.0, -1.0, 0.2, 2.0, 7.5], dtype=torch.float64)
    got = ops._function(nearest("x", {}), ("x",), "sin inflection")(x)
    assert torch.allclose(got, torch.round(x / torch.pi) * torch.pi)


def test_s_shaped_relaxations_are_sound_and_touch_the_far_end() -> None:
    """relax.absd's lines for the S-shaped ops and sin/cos, on 400 intervals across an
    inflection point each (sin and cos: at k pi and pi/2 + k pi, k up to 30, rising and
    falling; widths up to pi), tested at 16 points: lower <= f <= upper within the checker's
    tolerance. Where CROWN's tangent through the far end is taken (not the chord, which meets
    both ends), the upper line passes within rounding of (l, f(l)) and the lower one of
    (u, f(u)): the tangent point is found, not approached from one side by a grid of
    candidates (those left a gap)."""
    from absdsl.soundness import DTYPE, Violation, check_relaxation, relaxation_functions

    functions = {name: fn for name, _, fn in relaxation_functions("deeppoly")}
    gen = torch.Generator().manual_seed(3)
    n = 400
    for op in ("sin", "cos", "sigmoid", "tanh", "arctan", "softsign"):
        centre = torch.zeros(n, dtype=DTYPE)
        if op in ("sin", "cos"):
            centre = torch.randint(-30, 31, (n,), generator=gen).to(DTYPE) * torch.pi
            centre = centre + (torch.pi / 2 if op == "cos" else 0.0)
        width = torch.rand(n, generator=gen, dtype=DTYPE) * (
            torch.pi if op in ("sin", "cos") else 8.0)
        share = torch.rand(n, generator=gen, dtype=DTYPE) * 0.9 + 0.05
        l, u = centre - share * width, centre + (1 - share) * width
        x = l[:, None] + (u - l)[:, None] * torch.linspace(0, 1, 16, dtype=DTYPE)
        ll, uu = l[:, None].expand_as(x).reshape(-1), u[:, None].expand_as(x).reshape(-1)
        try:
            check_relaxation(op, {}, functions[op], ll, uu, x.reshape(-1))
        except Violation as err:
            raise AssertionError(str(err)) from None
        a_lo, b_lo, a_hi, b_hi = (torch.as_tensor(t, dtype=DTYPE).expand_as(l)
                                  for t in functions[op](l, u))
        f = ops.get(op).torch_fn({})
        tol_l, tol_u = 1e-9 * (1 + l.abs()), 1e-9 * (1 + u.abs())
        up_l, up_u = a_hi * l + b_hi - f(l), a_hi * u + b_hi - f(u)
        lo_l, lo_u = f(l) - (a_lo * l + b_lo), f(u) - (a_lo * u + b_lo)
        tangent_up = (up_l.abs() <= tol_l) & (up_u > 1e-6)
        tangent_lo = (lo_u.abs() <= tol_u) & (lo_l > 1e-6)
        assert float(tangent_up.to(DTYPE).mean()) > 0.1, op
        assert float(tangent_lo.to(DTYPE).mean()) > 0.1, op
