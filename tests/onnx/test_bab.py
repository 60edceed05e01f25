"""Input-box branch and bound (``absdsl.verification.bab``): every branch's bounds hold inside its
box, the halves cover their parent, and its answers agree with a dense grid."""

from __future__ import annotations

import time

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx_helpers import confirming
from torch import nn

from absdsl.verification.bab import BranchRecord, InputBab, split_box
from absdsl.verification.vnnlib import Polytope


def _net(seed: int, n_in: int, width: int = 12, depth: int = 2) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    d = n_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, 2))
    return nn.Sequential(*layers).double().eval()


def _grid(n_in: int, lo: np.ndarray, hi: np.ndarray, per_axis: int) -> torch.Tensor:
    axes = [torch.linspace(float(a), float(b), per_axis, dtype=torch.float64)
            for a, b in zip(lo, hi, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, n_in)


def _search(net: nn.Module, n_in: int, polys: list[Polytope], seconds: float,
            record: list[BranchRecord] | None = None) -> tuple[InputBab, list]:
    found: list = []
    start = [time.perf_counter()]

    confirm = confirming(net, n_in, polys, found)

    bab = InputBab(net, (n_in,), polys, 1e-6,
                   lambda: seconds - (time.perf_counter() - start[0]), confirm, record=record,
                   batch=16)
    start[0] = time.perf_counter()  # the clock starts after compiling
    return bab, found


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 3),
       frac=st.floats(-0.3, 0.2))
def test_every_branch_bound_holds_inside_its_box(seed: int, n_in: int, frac: float) -> None:
    net = _net(seed, n_in)
    lo, hi = -np.ones(n_in), np.ones(n_in)
    with torch.no_grad():
        gap = net(_grid(n_in, lo, hi, 41 if n_in < 3 else 15)) @ torch.tensor([-1.0, 1.0],
                                                                             dtype=torch.float64)
    c = float(gap.min()) + frac * float(gap.max() - gap.min())
    poly = Polytope(np.array([[-1.0, 1.0]]), np.array([c]), np.array([False]))
    record: list[BranchRecord] = []
    bab, _ = _search(net, n_in, [poly], 3.0, record)
    out = bab.run(lo, hi)
    assert record or out.status == "sat"  # a witness may come before the first bound
    assert out.branches == len({(r.lo.numpy().tobytes(), r.hi.numpy().tobytes())
                                for r in record})
    gen = torch.Generator().manual_seed(seed)
    for r in record[:: max(1, len(record) // 40)]:
        assert bool((r.lo >= torch.from_numpy(lo)).all() and (r.hi <= torch.from_numpy(hi)).all())
        pts = r.lo + (r.hi - r.lo) * torch.rand(200, n_in, generator=gen, dtype=torch.float64)
        pts = torch.cat([pts, r.lo[None], r.hi[None]])
        with torch.no_grad():
            rows = net(pts) @ torch.from_numpy(poly.A).T
        assert bool((rows >= r.lower - 1e-9).all()), (r.domain, r.lo, r.hi)
    if out.status == "unsat":  # nothing on the grid reaches the polytope
        assert float(gap.min()) > c
    if out.status == "sat":
        k, x = out.witness
        assert np.all(x >= lo) and np.all(x <= hi)
        with torch.no_grad():
            y = net(torch.from_numpy(x).reshape(1, n_in))[0]
        assert float(y[1] - y[0]) <= c


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 6), boxes=st.integers(1, 5))
def test_halves_cover_their_parent(seed: int, n: int, boxes: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randn(boxes, n, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(boxes, n, generator=gen, dtype=torch.float64) * 10 ** float(
        torch.randint(-12, 3, (1,), generator=gen))
    dims = torch.randint(0, n, (boxes,), generator=gen)
    a_lo, a_hi, b_lo, b_hi = split_box(lo, hi, dims)
    assert bool((a_lo == lo).all() and (b_hi == hi).all())
    assert bool((a_hi <= hi).all() and (b_lo >= lo).all())
    assert bool((a_hi >= b_lo).all())  # the halves share (at least) the midpoint
    pts = lo + (hi - lo) * torch.rand(boxes, n, generator=gen, dtype=torch.float64)
    in_a = ((pts >= a_lo) & (pts <= a_hi)).all(dim=1)
    in_b = ((pts >= b_lo) & (pts <= b_hi)).all(dim=1)
    assert bool((in_a | in_b).all())
    other = torch.ones_like(lo, dtype=torch.bool)
    other[torch.arange(boxes), dims] = False
    assert bool(((a_hi == hi) | ~other).all() and ((b_lo == lo) | ~other).all())


def test_proves_what_the_root_bounds_cannot_and_finds_a_hidden_witness() -> None:
    net = _net(3, 2, width=16, depth=3)
    lo, hi = -np.ones(2), np.ones(2)
    with torch.no_grad():
        gap = net(_grid(2, lo, hi, 401)) @ torch.tensor([-1.0, 1.0], dtype=torch.float64)
    below = float(gap.min()) - 1e-3  # unreachable by a hair: needs many splits
    poly = Polytope(np.array([[-1.0, 1.0]]), np.array([below]), np.array([False]))
    bab, found = _search(net, 2, [poly], 60.0)
    out = bab.run(lo, hi)
    assert out.status == "unsat" and out.branches > 10 and out.leaves > 5 and not found
    # a polytope reached only near the grid's minimum: the search finds and confirms it
    above = float(gap.min()) + 1e-3
    poly = Polytope(np.array([[-1.0, 1.0]]), np.array([above]), np.array([False]))
    bab, found = _search(net, 2, [poly], 60.0)
    out = bab.run(lo, hi)
    assert out.status == "sat" and found
    k, x = out.witness
    with torch.no_grad():
        assert float(net(torch.from_numpy(x)[None])[0] @ torch.tensor([-1.0, 1.0],
                                                                        dtype=torch.float64)) \
            <= above


def test_several_polytopes_all_refuted_per_leaf_and_timeout() -> None:
    net = _net(5, 2)
    lo, hi = -np.ones(2), np.ones(2)
    with torch.no_grad():
        ys = net(_grid(2, lo, hi, 201))
    # the output reaches neither far corner: two polytopes, each refuted somewhere
    polys = [Polytope(np.array([[-1.0, 0.0]]), np.array([-float(ys[:, 0].max()) - 1e-3]),
                      np.array([False])),
             Polytope(np.array([[0.0, 1.0]]), np.array([float(ys[:, 1].min()) - 1e-3]),
                      np.array([False]))]
    bab, found = _search(net, 2, polys, 60.0)
    out = bab.run(lo, hi)
    assert out.status == "unsat" and not found
    bab, _ = _search(net, 2, polys, -1.0)
    assert bab.run(lo, hi).status == "timeout"


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n_in=st.integers(1, 5), width=st.floats(1e-4, 3.0),
       scale=st.floats(0.1, 100.0))
def test_search_threshold_is_never_below_certifys(
        seed: int, n_in: int, width: float, scale: float) -> None:
    """The search refutes a row only above ``absdsl certify``'s threshold for the same box
    and domain (tolerance + 1e-9 M, M over the domain's own computation), plus the
    polytope's 1e-9 max|b|, on random networks and boxes of every scale."""
    import absdsl
    from absdsl.training.certify import certificate_threshold

    net = _net(seed, n_in, width=10, depth=3)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale ** (1 / 4))
    gen = torch.Generator().manual_seed(seed)
    lo = torch.randn(6, n_in, generator=gen, dtype=torch.float64) * scale
    hi = lo + width * scale * torch.rand(6, n_in, generator=gen, dtype=torch.float64)
    spec = torch.tensor([[[-1.0, 1.0], [1.0, 0.0]]], dtype=torch.float64).expand(6, -1, -1)
    poly = Polytope(np.array([[1.0, -1.0]]), np.array([0.5]), np.zeros(1, dtype=bool))
    search = InputBab(net, (n_in,), [poly], 1e-6, lambda: 1.0, lambda k, p: None)
    for name in ("crown-ibp", "deeppoly"):
        prog = absdsl.compile(net, name, input_shape=(n_in,))
        with torch.no_grad():
            lb, ub = prog(lo, hi, spec=spec)
            own = certificate_threshold(prog, lo, hi, lb, ub, 1e-6)
        assert bool((search._threshold(prog, lo, hi, lb, ub) >= own).all()), name


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), rows=st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_combined_rows_are_implied_and_leave_violations_unchanged(seed: int,
                                                                  rows: list[int]) -> None:
    """The mean row added per polytope holds wherever the polytope's rows hold, so refuting
    it refutes the polytope; the violations that the attack minimises do not change."""
    from absdsl.verification.bab import stack_polytopes, violations

    rng = np.random.default_rng(seed)
    polys = [Polytope(rng.normal(size=(m, 3)), rng.normal(size=m), np.zeros(m, dtype=bool))
             for m in rows]
    plain = stack_polytopes(polys)
    rows_of, a, b, _ = stack_polytopes(polys, combined=True)
    assert [s.stop - s.start for s in rows_of] == [m + (m > 1) for m in rows]
    y = torch.from_numpy(rng.normal(size=(500, 3)) * 3)
    v_plain = violations(y, plain[1], plain[2], plain[0])
    # equal up to rounding (the attack's guide only; witnesses are checked by ``confirm``)
    assert torch.allclose(violations(y, a, b, rows_of), v_plain, rtol=1e-12, atol=1e-12)
    for k, s in enumerate(rows_of):
        inside = v_plain[:, k] <= 0
        assert bool((y[inside] @ a[s].T - b[s] <= 1e-12).all())


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), pushes=st.lists(st.integers(1, 9), min_size=1, max_size=5),
       n=st.integers(1, 12))
def test_pool_pops_the_most_promising_first_and_loses_no_box(seed: int, pushes: list[int],
                                                             n: int) -> None:
    from absdsl.verification.bab import _Pool

    gen = torch.Generator().manual_seed(seed)
    pool = _Pool(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), 3)
    pushed = [0.0]
    for m in pushes:
        lo = torch.rand(m, 2, generator=gen, dtype=torch.float64)
        prio = torch.randn(m, generator=gen, dtype=torch.float64)
        pool.push(lo, lo + 1, torch.ones(m, 3, dtype=torch.bool),
                  torch.randint(0, 5, (m,), generator=gen), prio)
        pushed += prio.tolist()
    got: list[torch.Tensor] = []
    while pool.size:
        before = pool.prio.clone()
        lo, hi, open_, _ = pool.pop(n)
        assert lo.shape[0] == min(n, before.numel())
        assert torch.allclose(hi - lo, torch.ones_like(lo))
        if pool.size:  # nothing left behind is clearly more promising than what was taken
            assert float(pool.prio.min()) >= float(before.sort().values[lo.shape[0] - 1]) - 1e-6
        got.append(lo)
    assert sum(t.shape[0] for t in got) == len(pushed)


@given(per_box=st.floats(1e-7, 10.0), left=st.floats(-1.0, 100.0))
def test_next_batch_fits_the_time_left(per_box: float, left: float) -> None:
    from absdsl.verification.bab import MAX_BATCH, MIN_BATCH, TARGET_CALL_SECONDS, next_batch

    n = next_batch(per_box, left)
    assert MIN_BATCH <= n <= MAX_BATCH
    if n > MIN_BATCH:  # more than the floor only when the round fits both limits
        assert n * per_box <= min(TARGET_CALL_SECONDS, left / 2) + 1e-12
