"""ReLU branch and bound (``absdsl.verification.relu_bab``) and the split constraints of the
bound programs (``Context.splits``): every branch's bounds hold at the points of its
sub-domain (input box AND phases), proved leaves have no counterexample, and the answers
agree with the exact MILP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_helpers import confirming, export, vnnlib
from test_bab import _net
from torch import nn

import absdsl
from absdsl.cli import main
from absdsl.training.milp import NetworkMilp
from absdsl.verification.relu_bab import (
    ReluBab,
    ReluBranchRecord,
    bound_with_splits,
    relu_nodes,
)
from absdsl.verification.vnnlib import Polytope


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """One torch thread, as ``absdsl verify`` runs (tiny tensors: more threads only wait)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _search(net: nn.Module, n_in: int, polys: list[Polytope], seconds: float,
            record: list[ReluBranchRecord] | None = None, max_records: int = 10**9,
            **kw: object) -> tuple[ReluBab, list]:
    """The search with a budget of ``seconds`` (and of ``max_records`` bounded branches when
    recording, so that a loaded machine checks as many branches as an idle one)."""
    found: list = []
    start = [time.perf_counter()]

    def left() -> float:
        if record is not None and len(record) >= max_records:
            return 0.0
        return seconds - (time.perf_counter() - start[0])

    confirm = confirming(net, n_in, polys, found)

    bab = ReluBab(net, (n_in,), polys, 1e-6, left, confirm, record=record,
                  batch=8, **kw)  # type: ignore[arg-type]
    start[0] = time.perf_counter()
    return bab, found


def _margin_range(net: nn.Module, n_in: int, n: int = 20_000) -> tuple[float, float]:
    gen = torch.Generator().manual_seed(1)
    x = 2 * torch.rand(n, n_in, generator=gen, dtype=torch.float64) - 1
    with torch.no_grad():
        y = net(x)
    m = y[:, 0] - y[:, 1]
    return float(m.min()), float(m.max())


def _values(net: nn.Module, n_in: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every IR node's flat value at the points x (the compiled program's node names)."""
    cg = absdsl.compile(net, "deeppoly", input_shape=(n_in,)).concrete((n_in,))
    with torch.no_grad():
        return {k: v.reshape(x.shape[0], -1) for k, v in cg.forward(x).items()}


def _exact_min(net: nn.Module, n_in: int) -> float:
    """min of y0 - y1 over [-1, 1]^n by the exact MILP."""
    one = torch.ones(1, n_in, dtype=torch.float64)
    found = next(r for r in NetworkMilp(net, (n_in,)).min_margins(-one, one, 0) if r.target == 1)
    assert found.status == "optimal"
    return found.lower


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_in=st.integers(2, 4), depth=st.integers(2, 3),
       frac=st.floats(0.0, 0.2))
def test_every_branch_bound_holds_in_its_subdomain(seed: int, n_in: int, depth: int,
                                                    frac: float) -> None:
    net = _net(seed, n_in, width=10, depth=depth)
    lo_m, hi_m = _margin_range(net, n_in)
    # y0 - y1 <= c: unreachable (below the exact minimum), hard when close to it
    c = _exact_min(net, n_in) - frac * (hi_m - lo_m) - 1e-3
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([c]), np.array([False]))
    record: list[ReluBranchRecord] = []
    bab, _ = _search(net, n_in, [poly], 20.0, record, max_records=50, candidates=3)
    out = bab.run(-np.ones(n_in), np.ones(n_in))
    assert out.status != "sat"
    assert record and out.branches >= 1
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(4000, n_in, generator=gen, dtype=torch.float64) - 1
    x = torch.cat([x, torch.tensor([[-1.0] * n_in, [1.0] * n_in], dtype=torch.float64)])
    values = _values(net, n_in, x)
    with torch.no_grad():
        rows = net(x) @ torch.from_numpy(poly.A).T
    split_seen = False
    for r in record[:: max(1, len(record) // 60)]:
        inside = torch.ones(x.shape[0], dtype=torch.bool)
        for k, phase in r.phases.items():
            v = values[k]
            inside &= ((v >= 0) | (phase.unsqueeze(0) != 1)).all(dim=1)
            inside &= ((v <= 0) | (phase.unsqueeze(0) != -1)).all(dim=1)
            split_seen |= bool((phase != 0).any())
        if not bool(inside.any()):
            continue
        assert not r.infeasible, "a sub-domain with points was declared empty"
        for k, (lb, ub) in r.bounds.items():
            v = values[k][inside]
            slack = 1e-9 * (1 + v.abs())
            assert bool((v >= lb - slack).all() and (v <= ub + slack).all()), (k, r.domain)
        assert bool((rows[inside] >= r.lower - 1e-9).all()), r.domain
        if bool((r.lower - torch.from_numpy(poly.b) > 1e-6).any()):  # a proved leaf
            assert bool((rows[inside, 0] > c).all())
    if out.branches > 1:  # children are bounded by the optimised alpha-beta-CROWN only
        assert split_seen
        assert any(r.domain == "alpha-beta-crown-ibp" for r in record), {r.domain for r in record}


@pytest.mark.parametrize("seed", [3, 11, 42])
def test_answers_agree_with_the_milp(seed: int) -> None:
    n_in = 3
    net = _net(seed, n_in, width=12, depth=2)
    lo, hi = -torch.ones(1, n_in, dtype=torch.float64), torch.ones(1, n_in, dtype=torch.float64)
    exact = _exact_min(net, n_in)
    dp, _ = absdsl.compile(net, "deeppoly", input_shape=(n_in,))(
        lo, hi, spec=torch.tensor([[[1.0, -1.0]]], dtype=torch.float64))
    gap = exact - float(dp[0, 0].detach())
    assert gap > 1e-4  # the bounds alone do not decide: the search has to split
    branches = []
    for delta, want in ((-0.5 * gap, "unsat"), (0.02 * gap + 1e-6, "sat")):
        c = exact + delta  # y0 - y1 <= c
        poly = Polytope(np.array([[1.0, -1.0]]), np.array([c]), np.array([False]))
        bab, found = _search(net, n_in, [poly], 4.0)
        out = bab.run(-np.ones(n_in), np.ones(n_in))
        assert out.status == want, (seed, want, out)
        branches.append(out.branches)
        if want == "sat":
            k, x = found[-1]
            assert bool(np.all(x >= -1) and np.all(x <= 1))
            with torch.no_grad():
                y = net(torch.from_numpy(x).reshape(1, n_in))[0]
            assert float(y[0] - y[1]) <= c
    assert branches[0] > 1  # unsat needed splits


def test_two_polytopes_must_both_be_refuted() -> None:
    net = _net(5, 3, width=12)
    lo_m, _ = _margin_range(net, 3)
    far = Polytope(np.array([[1.0, -1.0]]), np.array([lo_m - 10.0]), np.array([False]))
    near = Polytope(np.array([[1.0, -1.0]]), np.array([lo_m + 1e-3]), np.array([False]))
    bab, found = _search(net, 3, [far, near], 5.0)
    out = bab.run(-np.ones(3), np.ones(3))
    assert out.status == "sat" and found[-1][0] == 1


def test_spent_budget_is_a_timeout() -> None:
    net = _net(2, 3, width=10)
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([-1e6]), np.array([False]))
    bab, _ = _search(net, 3, [poly], 0.0)
    assert bab.run(-np.ones(3), np.ones(3)).status == "timeout"


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
def test_split_constraints_in_the_program(domain: str) -> None:
    """No constraint (none, empty, infinite clamps) changes no bound; a phase clamps the
    node's bounds, is what later layers see, and a crossing clamp shows as l > u."""
    net = _net(7, 3, width=8)
    prog = absdsl.compile(net, domain, input_shape=(3,))
    lo = torch.full((1, 3), -1.0, dtype=torch.float64)
    hi = torch.full((1, 3), 1.0, dtype=torch.float64)
    spec = torch.tensor([[[1.0, -1.0]]], dtype=torch.float64)
    with torch.no_grad():
        plain = prog(lo, hi, spec=spec)
        base = prog.intermediate_bounds(lo, hi)
        first, second = relu_nodes(prog, (3,))
        free = {k: (torch.full((1, 8), -np.inf, dtype=torch.float64),
                    torch.full((1, 8), np.inf, dtype=torch.float64)) for k in (first, second)}
        for splits in ({}, free):
            lb, ub, used = bound_with_splits(prog, lo, hi, spec, splits)
            assert torch.equal(lb, plain[0]) and torch.equal(ub, plain[1])
            assert all(torch.equal(used[k][0], base[k][0].reshape(1, -1)) for k in used)
        l0, u0 = base[first][0].reshape(-1), base[first][1].reshape(-1)
        j = int(torch.nonzero((l0 < 0) & (u0 > 0))[0, 0])
        lows, ups = free[first][0].clone(), free[first][1].clone()
        ups[0, j] = 0.0  # inactive
        _, _, used = bound_with_splits(prog, lo, hi, spec, {first: (lows, ups)})
        assert float(used[first][1][0, j]) == 0.0
        # later layers' bounds hold on the sub-domain (not necessarily inside the parent's
        # bounds: DeepPoly is not monotone in its inputs' bounds, so the search intersects)
        gen = torch.Generator().manual_seed(0)
        x = 2 * torch.rand(5000, 3, generator=gen, dtype=torch.float64) - 1
        values = _values(net, 3, x)
        inside = values[first][:, j] <= 0
        assert bool(inside.any()) and not bool(inside.all())
        l1, u1 = used[second]
        v = values[second][inside]
        assert bool((v >= l1 - 1e-9).all() and (v <= u1 + 1e-9).all())
        assert not torch.equal(torch.cat([l1, u1]), torch.cat([base[second][0], base[second][1]])
                               .reshape(2, -1))  # the split changed them
        lows[0, j] = float(u0[j]) + 1.0  # above the node's upper bound: an empty branch
        _, _, used = bound_with_splits(prog, lo, hi, spec, {first: (lows, ups)})
        assert float(used[first][0][0, j]) > float(used[first][1][0, j])


def test_verify_uses_relu_splitting_for_many_inputs(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A 70-input network (above the input-splitting limit): auto picks ReLU splitting, which
    proves what the bounds alone leave open; --complete milp still selects the MILP."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Linear(70, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                        nn.Linear(12, 2)).eval()
    path = export(net, (70,), tmp_path / "wide.onnx")
    box = [(-0.5, 0.5)] * 70
    milp = NetworkMilp(net, (70,))
    lo = torch.full((1, 70), -0.5, dtype=torch.float64)
    exact = next(r for r in milp.min_margins(lo, -lo, 0) if r.target == 1)
    dp, _ = absdsl.compile(net.double(), "deeppoly", input_shape=(70,))(
        lo, -lo, spec=torch.tensor([[[1.0, -1.0]]], dtype=torch.float64))
    c = exact.lower - 0.5 * (exact.lower - float(dp[0, 0].detach()))
    prop = tmp_path / "p.vnnlib"
    prop.write_text(vnnlib(box, 2, f"(<= (- Y_0 Y_1) {c!r})"))
    assert main(["verify", str(path), str(prop), "--json", "--timeout", "30"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["result"] == "unsat" and data["complete"] == "relu", data
    assert data["stage"] == "relu-bab" and data["branches"] > 1
    assert main(["verify", str(path), str(prop), "--json", "--complete", "milp"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["result"] == "unsat" and data["complete"] == "milp", data


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), picks=st.integers(1, 4))
def test_alpha_bounds_with_splits(seed: int, picks: int) -> None:
    """alpha-CROWN under split constraints (what the search runs on sub-problems DeepPoly
    left open): its bounds hold at sampled points of the sub-domain, are never looser than
    DeepPoly's with the same splits, and with no step equal one plain call with the splits
    (so ``optimize`` applies them)."""
    n_in, width = 3, 8
    net = _net(seed, n_in, width=width)
    dp = absdsl.compile(net, "deeppoly", input_shape=(n_in,))
    alpha = absdsl.compile(net, "alpha-crown", input_shape=(n_in,))
    lo = torch.full((1, n_in), -1.0, dtype=torch.float64)
    hi = torch.full((1, n_in), 1.0, dtype=torch.float64)
    spec = torch.tensor([[[1.0, -1.0], [0.0, 1.0]]], dtype=torch.float64)
    with torch.no_grad():
        base = dp.intermediate_bounds(lo, hi)
    first = relu_nodes(dp, (n_in,))[0]
    l0, u0 = base[first][0].reshape(-1), base[first][1].reshape(-1)
    unstable = torch.nonzero((l0 < 0) & (u0 > 0)).flatten().tolist()
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(5000, n_in, generator=gen, dtype=torch.float64) - 1
    values = _values(net, n_in, x)
    lows = torch.full((1, width), -np.inf, dtype=torch.float64)
    ups = torch.full((1, width), np.inf, dtype=torch.float64)
    inside = torch.ones(x.shape[0], dtype=torch.bool)
    for i, j in enumerate(unstable[:picks]):
        if (seed >> i) & 1:
            lows[0, j] = 0.0  # active
            inside &= values[first][:, j] >= 0
        else:
            ups[0, j] = 0.0  # inactive
            inside &= values[first][:, j] <= 0
    splits = {first: (lows, ups)}
    with torch.no_grad():
        dp_lb, dp_ub, _ = bound_with_splits(dp, lo, hi, spec, splits)
        plain_lb, plain_ub, plain_used = bound_with_splits(alpha, lo, hi, spec, splits)
    zero_lb, zero_ub = alpha.optimize(lo, hi, spec, steps=0, splits=splits)
    assert torch.equal(zero_lb, plain_lb) and zero_ub is not None
    assert torch.equal(zero_ub, plain_ub)
    used: dict = {}
    lb, ub = alpha.optimize(lo, hi, spec, steps=8, splits=splits, record=used)
    assert ub is not None and set(used) >= set(plain_used)
    assert bool((lb >= dp_lb - 1e-9).all() and (ub <= dp_ub + 1e-9).all())
    kept_l, kept_u = used[first][0].reshape(-1), used[first][1].reshape(-1)
    assert bool((kept_l >= lows[0]).all() and (kept_u <= ups[0]).all())  # the splits apply
    if not bool(inside.any()):
        return
    with torch.no_grad():
        rows = net(x[inside]) @ spec[0].T
    assert bool((rows >= lb - 1e-9).all() and (rows <= ub + 1e-9).all())
    for k, (a, b) in used.items():
        v = values[k][inside]
        slack = 1e-9 * (1 + v.abs())
        a, b = a.reshape(1, -1), b.reshape(1, -1)
        assert bool((v >= a - slack).all() and (v <= b + slack).all()), k
