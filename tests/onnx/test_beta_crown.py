"""alpha-beta-CROWN (``domains/alpha-beta-crown.absd``): the split neurons' slopes as
beta-CROWN's multipliers. Unoptimised it is DeepPoly (and its branch-and-bound variant
CROWN-IBP) bit for bit; every parameter value in the ranges gives bounds that hold at
sampled points of a split sub-domain; the prover proves the stable cases for the whole range
and refutes a range one step too wide; ``BoundProgram.bounds_with_splits`` checks its
clamps; in the search, only split neurons' stable slopes move and the children of a
sub-problem start from its values (float64 throughout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_bab import _net

import absdsl
from absdsl.dsl.loader import builtin_path
from absdsl.errors import InputError
from absdsl.prove import prove_file
from absdsl.verification.relu_bab import (
    _INNER_DOMAINS,
    compile_domain,
    relu_nodes,
)
from absdsl.verification.relu_bab_tree import children_warm, split_children

STABLE = {"active_lower": (-1.0, 1.0), "active_upper": (1.0, 3.0),
          "inactive_lower": (0.0, 2.0), "inactive_upper": (-2.0, 0.0)}


def _box(n_in: int, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.full((batch, n_in), -1.0, dtype=torch.float64),
            torch.full((batch, n_in), 1.0, dtype=torch.float64))


def _splits(prog: absdsl.BoundProgram, n_in: int, seed: int, picks: int
            ) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]]:
    """Phases for up to ``picks`` unstable neurons of each ReLU layer (by ``seed``) as clamps,
    and the phases themselves (+1 active, -1 inactive, 0 free)."""
    lo, hi = _box(n_in)
    with torch.no_grad():
        base = prog.intermediate_bounds(lo, hi)
    gen = torch.Generator().manual_seed(seed)
    splits, phases = {}, {}
    for node in relu_nodes(prog, (n_in,)):
        l0, u0 = base[node][0].reshape(-1), base[node][1].reshape(-1)
        unstable = torch.nonzero((l0 < 0) & (u0 > 0)).flatten()
        chosen = unstable[torch.randperm(unstable.numel(), generator=gen)[:picks]]
        low = torch.full((1, l0.numel()), -np.inf, dtype=torch.float64)
        up = torch.full((1, l0.numel()), np.inf, dtype=torch.float64)
        phase = torch.zeros(l0.numel(), dtype=torch.int8)
        for j in chosen.tolist():
            if bool(torch.rand((), generator=gen) < 0.5):
                low[0, j], phase[j] = 0.0, 1
            else:
                up[0, j], phase[j] = 0.0, -1
        splits[node], phases[node] = (low, up), phase
    return splits, phases


def _inside(net: torch.nn.Module, n_in: int, phases: dict[str, torch.Tensor], n: int,
            seed: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Points of [-1, 1]^n whose pre-activations satisfy the phases, and every node's value."""
    gen = torch.Generator().manual_seed(seed)
    x = 2 * torch.rand(n, n_in, generator=gen, dtype=torch.float64) - 1
    cg = absdsl.compile(net, "deeppoly", input_shape=(n_in,)).concrete((n_in,))
    with torch.no_grad():
        values = {k: v.reshape(n, -1) for k, v in cg.forward(x).items()}
    keep = torch.ones(n, dtype=torch.bool)
    for k, phase in phases.items():
        keep &= ((values[k] >= 0) | (phase != 1)).all(dim=1)
        keep &= ((values[k] <= 0) | (phase != -1)).all(dim=1)
    return x[keep], {k: v[keep] for k, v in values.items()}


@pytest.mark.parametrize("depth", [1, 3])
def test_initial_values_are_deeppoly_and_crown_ibp_bit_for_bit(depth: int) -> None:
    """No parameter given (and an empty dict, which the call fills with the initial values):
    the built-in equals DeepPoly and the search's variant CROWN-IBP, with and without
    splits; the five parameters are declared with the documented ranges."""
    net = _net(5, 4, width=10, depth=depth)
    spec = torch.tensor([[[1.0, -1.0], [0.0, 1.0]]], dtype=torch.float64)
    lo, hi = _box(4)
    pairs = [("alpha-beta-crown", "deeppoly"), ("alpha-beta-crown-ibp", "crown-ibp")]
    for ours_name, theirs_name in pairs:
        ours = compile_domain(net, ours_name, (4,))
        theirs = absdsl.compile(net, theirs_name, input_shape=(4,))
        assert ours.relax_param_ranges() == {"alpha": (0.0, 1.0)} | STABLE
        splits, _ = _splits(theirs, 4, seed=depth, picks=2)
        for clamps in (None, splits):
            with torch.no_grad():
                want = theirs.bounds_with_splits(lo, hi, spec, clamps)
                got = ours.bounds_with_splits(lo, hi, spec, clamps)
                filled: dict = {}
                again = ours.bounds_with_splits(lo, hi, spec, clamps, relax_params=filled)
            assert filled, "the call fills in the initial values"
            for a, b, c in zip(want, got, again, strict=True):
                assert a is not None and b is not None and c is not None
                assert torch.equal(a, b) and torch.equal(a, c), (ours_name, clamps is None)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), picks=st.integers(1, 4), depth=st.integers(1, 3),
       fill=st.sampled_from(["random", "low", "high"]))
def test_every_value_in_the_ranges_bounds_the_split_subdomain(seed: int, picks: int,
                                                              depth: int, fill: str) -> None:
    """Random (or extreme) values of every parameter, per neuron and per back-substituted
    node: the row bounds and every pre-activation bound hold at the sampled points of the
    sub-domain the splits define, for both programs the search runs."""
    n_in = 3
    net = _net(seed, n_in, width=8, depth=depth)
    spec = torch.tensor([[[1.0, -1.0], [-1.0, 0.0]]], dtype=torch.float64)
    lo, hi = _box(n_in)
    for name in ("alpha-beta-crown", "alpha-beta-crown-ibp"):
        prog = compile_domain(net, name, (n_in,))
        splits, phases = _splits(prog, n_in, seed, picks)
        ranges = prog.relax_param_ranges()
        values: dict = {}
        with torch.no_grad():
            prog.bounds_with_splits(lo, hi, spec, splits, relax_params=values)
        gen = torch.Generator().manual_seed(seed)
        for per_node in values.values():
            for p, t in per_node.items():
                a, b = ranges[p]
                r = torch.rand(t.shape, generator=gen, dtype=torch.float64)
                r = {"random": r, "low": torch.zeros_like(r), "high": torch.ones_like(r)}[fill]
                per_node[p] = a + (b - a) * r
        used: dict = {}
        with torch.no_grad():
            lb, ub = prog.bounds_with_splits(lo, hi, spec, splits, relax_params=values,
                                             record=used)
        assert ub is not None
        x, node_values = _inside(net, n_in, phases, 4000, seed)
        if x.shape[0] == 0:
            continue
        with torch.no_grad():
            rows = net(x) @ spec[0].T
        assert bool((rows >= lb - 1e-9).all() and (rows <= ub + 1e-9).all()), (name, fill)
        for k, (a, b) in used.items():
            v = node_values[k]
            slack = 1e-9 * (1 + v.abs())
            assert bool((v >= a - slack).all() and (v <= b + slack).all()), (name, k)


def _relu_file(tmp_path: Path, active_lower: str) -> Path:
    text = builtin_path("alpha-beta-crown.absd").read_text()
    text = text.replace("param active_lower in [-1, 1] = 1",
                        f"param active_lower in {active_lower} = 1")
    assert active_lower in text
    (tmp_path / "relax.absd").write_text(builtin_path("relax.absd").read_text())
    (tmp_path / "box.absd").write_text(builtin_path("box.absd").read_text())
    path = tmp_path / "abc.absd"
    path.write_text(text)
    return path


def test_the_prover_proves_the_stable_slopes_and_refutes_a_wider_range(tmp_path: Path) -> None:
    """Every ReLU case of the file is proved for all values in the ranges; an active lower
    slope allowed above 1 is refuted with a counterexample above 1 (the line s x rises above
    y = x for x > 0)."""
    report = prove_file(builtin_path("alpha-beta-crown.absd"))
    relu = [r for r in report.results if r.name.startswith("relax relu")]
    assert len(relu) >= 3 and all(r.status == "proved" for r in relu), report.format()
    report = prove_file(_relu_file(tmp_path, "[-1, 1.25]"))
    refuted = [r for r in report.results if r.status == "refuted"]
    assert [r.name for r in refuted] == ["relax relu case 2"], report.format()
    assert refuted[0].counterexample["active_lower"] > 1, refuted[0].counterexample


def test_bounds_with_splits_checks_its_clamps() -> None:
    net = _net(2, 3, width=6)
    prog = absdsl.compile(net, "deeppoly", input_shape=(3,))
    lo, hi = _box(3)
    node = relu_nodes(prog, (3,))[0]
    free = torch.full((1, 6), np.inf, dtype=torch.float64)
    with pytest.raises(InputError, match=rf"splits\['{node}'\] must be \[batch, neurons\]"):
        prog.bounds_with_splits(lo, hi, None, {node: (-free[:, :5], free[:, :5])})
    with pytest.raises(InputError, match="splits names 'nowhere', which is no node"):
        prog.bounds_with_splits(lo, hi, None, {"nowhere": (-free, free)})
    record: dict = {}
    lb, ub = prog.bounds_with_splits(lo, hi, None, {node: (-free, free)}, record=record)
    assert ub is not None and torch.equal(lb, prog(lo, hi)[0])
    assert record[node][0].shape == (1, 6)


def test_children_start_from_their_parents_values_in_split_order() -> None:
    """``_children_warm`` lays the values out as ``_split`` lays out the children: the
    inactive halves of the kept sub-problems, then the active ones."""
    bounds = {"n": (torch.full((3, 2), -1.0), torch.full((3, 2), 1.0))}
    item = {"phases": {"n": torch.zeros((3, 2), dtype=torch.int8)},
            "depth": torch.zeros(3, dtype=torch.long)}
    keep = torch.tensor([True, False, True])
    children = split_children(item, bounds, torch.ones((3, 1), dtype=torch.bool), keep,
                      torch.tensor([0, 1]), ["n"])
    warm = {"act": {"alpha": torch.tensor([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])}}
    got = children_warm(warm, keep)["act"]["alpha"]
    assert torch.equal(got, torch.tensor([[0.1, 0.2], [0.5, 0.6], [0.1, 0.2], [0.5, 0.6]]))
    assert children["phases"]["n"][:, 0].tolist() == [-1, 0, 1, 0]
    assert children["phases"]["n"][:, 1].tolist() == [0, -1, 0, 1]
    assert set(_INNER_DOMAINS) == {"alpha-beta-crown-ibp"}


@pytest.mark.parametrize("param, wider, which", [
    ("active_lower in [-1, 1]", "active_lower in [-1, 1.25]", "lower line > f(x)"),
    ("active_upper in [1, 3]", "active_upper in [0.75, 3]", "f(x) > upper line"),
    ("inactive_lower in [0, 2]", "inactive_lower in [-0.25, 2]", "lower line > f(x)"),
    ("inactive_upper in [-2, 0]", "inactive_upper in [-2, 0.25]", "f(x) > upper line")])
def test_check_samples_the_stable_ranges(tmp_path: Path, param: str, wider: str,
                                         which: str) -> None:
    """``absdsl check``'s relaxation functions (both ends of every range, and a varying
    value) pass on the built-in file and catch each stable range widened past its line."""
    from absdsl.soundness import Violation, check_relaxation, relax_grid, relaxation_functions

    L, U, X = relax_grid()
    for op, params, fn in relaxation_functions("alpha-beta-crown"):
        if op == "relu":
            check_relaxation(op, params, fn, L, U, X)
    text = _relu_file(tmp_path, "[-1, 1]").read_text()
    assert param in text
    (tmp_path / "abc.absd").write_text(text.replace(param, wider))
    caught = []
    for op, params, fn in relaxation_functions(str(tmp_path / "abc.absd")):
        if op != "relu":
            continue
        try:
            check_relaxation(op, params, fn, L, U, X)
        except Violation as v:
            caught.append(v.cex.which)
    assert which in caught, caught
