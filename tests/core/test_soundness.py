"""Soundness of every built-in domain via absdsl.soundness (Hypothesis, fixed seeds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import absdsl
from absdsl.compiler.ops import ACTIVATIONS
from absdsl.dsl.loader import builtin_path
from absdsl.soundness import (
    BASE_SURFACES,
    DEFAULT_PROPERTIES,
    ENGINE_COVERAGE,
    PROPERTIES,
    Layer,
    NetSpec,
    Surface,
    Violation,
    aim,
    build_net,
    check_domain,
    compare,
    guard_surfaces,
    input_boxes,
    magnitude,
    networks,
    relaxation_functions,
    rules_property,
    special_points,
    supported_ops,
    tolerance,
)
from absdsl.soundness.checks import _check_case, _prepare

DOMAINS = ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"]
EXAMPLES = 12
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_output_bounds_sound(domain: str) -> None:
    report = check_domain(domain, max_examples=EXAMPLES, seed=1, properties=("bounds",))
    assert report.ok, report.format()
    assert report.results[0].examples >= EXAMPLES


@pytest.mark.parametrize("domain", DOMAINS)
def test_domain_spec_bounds_sound(domain: str) -> None:
    report = check_domain(domain, max_examples=EXAMPLES, seed=2, properties=("spec",))
    assert report.ok, report.format()


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
def test_relaxations_ordered(domain: str) -> None:
    report = check_domain(domain, max_examples=60, seed=3, properties=("relaxations",))
    # the guard grid, the product's planes and the Hypothesis search all ran
    assert len(report.results) == 3
    assert report.ok, report.format()
    ops = {op for op, _, _ in relaxation_functions(domain)}
    assert ops == set(ACTIVATIONS)  # every activation of the op table (relu6 = hardtanh)


@pytest.mark.parametrize("domain,missing", [
    ("box", set()), ("deeppoly", set()), ("crown-ibp", set()),
    ("zonotope", set()), ("hbox", set()),
])
def test_supported_ops_are_what_the_domain_declares(domain: str, missing: set[str]) -> None:
    """Only ops without a domain rule are skipped; the front end lowers every drawn op."""
    ops, skipped = supported_ops(domain)
    assert set(skipped) == missing, skipped
    assert {"linear", "conv", "bn", "avgpool", "adaptive", "flatten", "residual", "cat",
            "relu"} <= ops


def test_cli_default_properties_are_the_checkers() -> None:
    from absdsl.commands import check

    assert check.PROPERTIES == DEFAULT_PROPERTIES
    assert set(check.CHOICES) == set(PROPERTIES)


# ---- the checker's parts -------------------------------------------------------------------

def test_local_tolerance_finds_small_scale_errors_beside_huge_values() -> None:
    """A 1 % error on an output of scale 1e-6 is a violation even when another output of the
    same network is 1e3 (a tolerance over the whole grid, 1e-6 here, would hide it)."""
    values = torch.tensor([[[1e3, 1e-6]]], dtype=DTYPE)
    lb = torch.tensor([[1e3, 1.01e-6]], dtype=DTYPE)
    ub = torch.tensor([[1e3, 2e-6]], dtype=DTYPE)
    assert float(lb[0, 1] - values[0, 0, 1]) < tolerance(values, lb, ub)  # hidden globally
    with pytest.raises(Violation) as err:
        compare("bounds", "net", lb, ub, values, values, lb, ub, torch.zeros_like(lb))
    assert err.value.cex.index == (0, 1) and err.value.cex.tol < 1e-14
    # the magnitudes summed into an output widen its own tolerance, and only its own
    compare("bounds", "net", lb, ub, values, values, lb, ub,
            torch.tensor([[0.0, 1e2]], dtype=DTYPE))


def test_magnitude_bounds_every_layer_value() -> None:
    spec = NetSpec((1, 4, 4), (Layer("conv", (2, 3, 1, "same", 1, 2, False, 2), (0.5, -1.0)),
                               Layer("bn", (), (1.0, -2.0, 0.5, 3.0, 0.0, 1.0, 2.0, 0.5)),
                               Layer("relu"), Layer("adaptive", (2, 1)), Layer("flatten"),
                               Layer("linear", (3,), (1.0, -2.0, 0.5, 3.0))))
    net = build_net(spec)
    x = torch.randn(64, 1, 4, 4, dtype=DTYPE)
    m = x.abs().amax(0, keepdim=True)
    with torch.no_grad():
        for mod in net:
            x, m = mod(x), magnitude(mod, m)
            assert (x.abs() <= m + 1e-12).all()


def test_aim_lands_on_the_chosen_surface() -> None:
    """Aiming moves the domain's own pre-activation bounds onto l = 0, onto a user constant
    and onto a width surface (u - l = 1e-4, by scaling the row)."""
    spec = NetSpec((2,), (Layer("linear", (3,), (1.0, -0.5, 0.3, 2.0, -1.0, 0.7, 0.1, 0.2,
                                                 -0.3)),
                          Layer("relu"), Layer("linear", (1,), (1.0, 1.0, 1.0, 0.0))))
    lo = -torch.ones(2, 2, dtype=DTYPE)
    hi = torch.ones(2, 2, dtype=DTYPE)
    surfaces = (Surface(1, 0, 0), Surface(1, 0, 0.05), Surface(-1, 1, -1e-4))
    for domain in ("box", "deeppoly", "zonotope"):
        net = build_net(spec)
        prog = absdsl.compile(net, domain, input_shape=(2,))
        plan = [(1, i, 0, 1.0, 0) for i in range(3)]  # surface i, exactly on it
        assert aim(net, prog, lo, hi, plan, surfaces) == 3
        with torch.no_grad():
            (l, u), = prog.intermediate_bounds(lo, hi).values()
        assert abs(float(l[0, 0])) < 1e-12
        assert abs(float(l[0, 1]) + 0.05) < 1e-12
        assert abs(float(u[0, 2] - l[0, 2]) - 1e-4) < 1e-15


def test_guard_surfaces_of_the_built_ins() -> None:
    from absdsl.dsl.loader import load_domain

    for name in ("box", "hbox", "zonotope", "deeppoly", "crown-ibp"):
        found = guard_surfaces(load_domain(name))
        assert found[:3] == list(BASE_SURFACES)
    # the DeepPoly lower slope switches at u > -l: the same surface, not a new one; the others
    # are the widths where Box's sin/cos rule (a period, half a period) and exp's tangent
    # point (u - l = 1.98) switch
    extra = guard_surfaces(load_domain("deeppoly"))[3:]
    assert sorted(-s.c for s in extra) == [1.98, 3.1415926, 6.2831853]
    assert all((s.a, s.b) == (-1.0, 1.0) for s in extra)


def test_new_ops_are_checked_in_every_domain() -> None:
    """Conv1d with dilation, 'same' and no bias; batch norm; cat([z, act(z)]); adaptive
    pooling; x - f(x): one fixed case through the bounds and spec checks of each domain."""
    seq = NetSpec((2, 5), (Layer("conv", (2, 3, 1, "same", 1, 2, False, 1),
                                 (0.5, -1.0, 0.25, 1.5, -0.5, 2.0)),
                           Layer("bn", (), (1.0, 2.0, 0.5, -0.5, 0.0, 1.0, 2.0, 0.5)),
                           Layer("cat", inner=((), (Layer("relu"),))),
                           Layer("residual", (-1.0,), inner=((Layer("relu"),),)),
                           Layer("flatten"), Layer("linear", (2,), (1.0, -1.0, 0.5))))
    img = NetSpec((1, 4, 4), (Layer("conv", (2, 3, 1, 1, 1, 1, True, 2), (1.0, -0.5, 0.25)),
                              Layer("relu"), Layer("adaptive", (2, 2)), Layer("flatten")))
    g = torch.Generator().manual_seed(0)
    for spec in (seq, img):
        lo = torch.randn(2, *spec.input_shape, generator=g, dtype=DTYPE)
        hi = lo + torch.rand(2, *spec.input_shape, generator=g, dtype=DTYPE)
        for domain in DOMAINS:
            for use_spec in (False, True):
                case, prog = _prepare(domain, spec, (lo, hi), [(1, 0, 2, 1.0, 0)],
                                      BASE_SURFACES, 0)
                _check_case(domain, case, "bounds", use_spec, 0, prog)


def test_engine_property_reaches_the_optimised_paths() -> None:
    """DeepPoly's engine property runs patches, live columns, sparse lines and chunks, and
    agrees with the plain engine and the vmap form; forward domains agree with vmap."""
    report = check_domain("deeppoly", max_examples=60, seed=1, properties=("engine",))
    assert report.ok, report.format()
    for path in ("patch programs", "live columns", "sparse lines", "chunked refinement"):
        assert ENGINE_COVERAGE.get(path, 0) > 0, (path, ENGINE_COVERAGE)
    for domain in ("box", "zonotope"):
        report = check_domain(domain, max_examples=9, seed=0, properties=("engine",))
        assert report.ok and report.results[0].examples >= 3, report.format()


def test_engine_property_finds_a_broken_optimised_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sparse lines that drop the sign-dependent terms differ from the plain engine."""
    from absdsl.compiler.backsub import rows as rt

    real = rt.back_lines

    def broken(lines: tuple, ctx: Any) -> Any:
        out = real(lines, ctx)
        if getattr(out, "columns", None) is not None:
            out.a_half_at = out.a_half_at * 0.9
        return out

    monkeypatch.setattr(rt, "back_lines", broken)
    report = check_domain("deeppoly", max_examples=60, seed=1, properties=("engine",),
                          shrink_seconds=2)
    assert not report.ok


def test_degenerate_box_through_residual_zonotope() -> None:
    """Minimal repro found by the checker: x + Linear(x) on a box with lo == hi."""
    net = build_net(NetSpec((2,), (Layer("residual", inner=((
        Layer("linear", (2,), (0.5, 0.0, 0.0, 0.5, 0.1, 0.2)),),)),)))
    lo = torch.zeros(1, 2, dtype=DTYPE)
    for domain in ("zonotope", "hbox"):
        lb, ub = absdsl.compile(net, domain)(lo, lo.clone())
        expected = net(lo)
        assert torch.allclose(lb, expected) and torch.allclose(ub, expected)


# ---- mutation: a broken copy of box.absd is caught ---------------------------------------

def _mutated_box(tmp_path: Path) -> Path:
    text = builtin_path("box.absd").read_text()
    assert "    l = m - s\n" in text
    bad = tmp_path / "badbox.absd"
    bad.write_text(text.replace("    l = m - s\n", "    l = m\n"))
    return bad


def test_mutated_box_is_caught(tmp_path: Path) -> None:
    report = check_domain(str(_mutated_box(tmp_path)), max_examples=30, seed=0,
                          properties=("bounds",), shrink_seconds=5)
    assert not report.ok
    cex = report.counterexample
    assert cex is not None and cex.which == "lower bound"
    assert cex.excess > cex.tol
    text = report.format()
    assert "FAIL" in text and "network:" in text and "box lo" in text and "point x" in text


def test_absdsl_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Exit 1 on the broken file, 0 on a good one (in process: the command's main, as the
    script calls it), 2 on a missing one (through ``python -m absdsl``: the entry point)."""
    from absdsl.cli import main

    code = main(["check", str(_mutated_box(tmp_path)), "--examples", "15", "--property",
                 "bounds", "--shrink-seconds", "3"])
    out = capsys.readouterr()
    assert code == 1, out.out + out.err
    assert "FAIL" in out.out and "counterexample" in out.out
    code = main(["check", str(builtin_path("box.absd")), "--examples", "5", "--property",
                 "bounds"])
    out = capsys.readouterr()
    assert code == 0, out.out + out.err
    assert "PASS" in out.out
    missing = subprocess.run([sys.executable, "-m", "absdsl", "check", str(tmp_path / "nope.absd")],
                             capture_output=True, text=True, cwd=REPO, timeout=300)
    assert missing.returncode == 2 and "nope.absd" in missing.stderr


def test_mutated_relaxation_is_caught(tmp_path: Path) -> None:
    """A relu upper line that is too low (u/(u-l) * x) is found by the relaxation check."""
    text = builtin_path("relax.absd").read_text()
    old = "upper u / (u - l) * (x - l)"
    assert old in text
    (tmp_path / "relax.absd").write_text(text.replace(old, "upper u / (u - l) * x"))
    (tmp_path / "dp.absd").write_text('import "relax.absd"\n'
                                      "domain Bad { bounds backsub\n output backsub }\n")
    report = check_domain(str(tmp_path / "dp.absd"), max_examples=30, seed=0,
                          properties=("relaxations",), shrink_seconds=5)
    assert not report.ok
    assert "upper" in report.counterexample.which


# ---- every rule reached --------------------------------------------------------------------

@pytest.mark.parametrize("domain", DOMAINS)
def test_rules_property_reaches_every_rule(domain: str) -> None:
    """The per-rule sweep passes on the built-ins and reaches each of their rules; products,
    valley and antitone ops (rare in random networks) by thousands of examples."""
    report = check_domain(domain, properties=("rules",))
    assert report.ok, report.format()
    assert report.reach and all(r.examples > 0 for r in report.reach)
    text = report.format()
    assert "REACH" in text and "FAIL" not in text
    by_op: dict[str, int] = {}
    for r in report.reach:
        for op in r.ops:
            by_op[op] = max(by_op.get(op, 0), r.examples)
    for op in ("mul", "reciprocal", "gelu", "abs", "inv1p", "hardtanh", "sigmoid"):
        assert by_op.get(op, 0) >= 1000, (op, by_op)


def test_unreached_rule_is_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rule no example reached fails the check and is named in the report."""
    import absdsl.soundness.rules as sweep  # the module whose rules_property reads it

    full = sweep._rule_cases
    monkeypatch.setattr(sweep, "_rule_cases",
                        lambda ops: (c for c in full(ops) if c[0] == "relu"))
    ops, _ = supported_ops("box")
    result, reach = rules_property("box", ops)
    assert not result.passed
    assert "rule mul" in result.error and "rule valley" in result.error
    assert reach["Box rule monotone (line 22)"].examples > 0
    report = check_domain("box", properties=("rules",))  # still patched
    assert not report.ok and "FAIL  Box rule antitone" in report.format()


def test_checked_ranges_come_from_the_op_table() -> None:
    """An op defined on part of the line is never in a random network, and its relaxation is
    checked inside its valid range only, off its open ends (1 / x: from 1e-3)."""
    from absdsl.compiler import ops
    from absdsl.soundness import ACTIVATION_OPS, RELAX_RANGE

    partial = [op for op in ops.ELEMENTWISE if op.valid is not None]
    assert {"log", "sqrt", "reciprocal", "log1p"} <= {op.name for op in partial}
    for op in partial:
        assert op.valid is not None and op.name not in ACTIVATION_OPS
        lo, hi = RELAX_RANGE[op.name]
        assert op.valid[0] <= lo < hi <= min(op.valid[1], 1e3), op.name
        assert (lo > op.valid[0]) == op.valid[2], op.name  # open ends kept off, closed kept
    assert RELAX_RANGE["sqrt"][0] == 0.0 and RELAX_RANGE["reciprocal"][0] == 1e-3
    assert RELAX_RANGE["exp"] == (-1e3, 50.0)  # exp overflows float64 beyond 709


def test_special_points_come_from_the_op_table() -> None:
    """Kinks, inflections, dips and argmin are where the sweep puts its boxes."""
    assert {-1.0, 1.0} <= set(special_points("hardtanh", {"min_val": -1.0, "max_val": 1.0}))
    assert {0.0, 6.0} <= set(special_points("hardtanh", {"min_val": 0.0, "max_val": 6.0}))
    gelu = special_points("gelu", {"tanh_approximation": 0.0})
    assert any(abs(p + 0.7517915246935645) < 1e-12 for p in gelu)  # argmin
    assert any(abs(abs(p) - 2 ** 0.5) < 1e-12 for p in gelu)  # inflections
    assert {-3.0, 3.0, -1.5} <= set(special_points("hardswish", {}))


# ---- HBox is inside Box ------------------------------------------------------------------

@st.composite
def _net_and_box(draw):
    ops = frozenset({"linear", "conv", "bn", "avgpool", "flatten", "residual", "relu"})
    net = draw(networks(ops, max_layers=4))
    return net, draw(input_boxes(net.input_shape))


@seed(7)
@settings(max_examples=25, deadline=None, database=None)
@given(_net_and_box())
def test_hbox_inside_box(case) -> None:
    spec, (lo, hi) = case
    net = build_net(spec)
    lb_b, ub_b = absdsl.compile(net, "box")(lo, hi)
    try:
        lb_h, ub_h = absdsl.compile(net, "hbox")(lo, hi)
    except RuntimeError as err:  # the degenerate-box residual crash has its own test
        if "must match the size" in str(err):
            return
        raise
    scale = 1e-9 * (1 + float(torch.cat([lb_b, ub_b]).detach().abs().max()))
    assert (lb_h >= lb_b - scale).all() and (ub_h <= ub_b + scale).all()


def test_hbox_strictly_tighter_somewhere() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).to(DTYPE).eval()
    with torch.no_grad():
        # two stable neurons that are equal: HBox keeps their correlation, Box cannot
        net[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        net[0].bias.copy_(torch.tensor([3.0, 3.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
    lo, hi = -torch.ones(1, 2, dtype=DTYPE), torch.ones(1, 2, dtype=DTYPE)
    lb_b, ub_b = absdsl.compile(net, "box")(lo, hi)
    lb_h, ub_h = absdsl.compile(net, "hbox")(lo, hi)
    assert (lb_h - lb_b).max() > 0.5 or (ub_b - ub_h).max() > 0.5
