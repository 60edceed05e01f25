"""Soundness of every built-in domain via absdsl.soundness (Hypothesis, fixed seeds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import absdsl
from absdsl.dsl.loader import builtin_path
from absdsl.soundness import (
    Layer,
    NetSpec,
    build_net,
    check_domain,
    input_boxes,
    networks,
    relaxation_functions,
    supported_ops,
)

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
    assert len(report.results) == 2  # the guard grid and the Hypothesis search both ran
    assert report.ok, report.format()
    ops = {op for op, _, _ in relaxation_functions(domain)}
    assert ops == {"relu", "leaky_relu", "sigmoid", "tanh", "hardtanh"}


@pytest.mark.parametrize("domain,missing", [
    ("box", set()), ("deeppoly", set()), ("crown-ibp", set()),
    ("zonotope", {"leaky_relu", "sigmoid", "tanh", "hardtanh"}),
    ("hbox", {"leaky_relu", "sigmoid", "tanh", "hardtanh"}),
])
def test_supported_ops_are_what_the_domain_declares(domain: str, missing: set[str]) -> None:
    """Only ops without a domain rule are skipped; the front end lowers every drawn op."""
    ops, skipped = supported_ops(domain)
    assert set(skipped) == missing, skipped
    assert {"linear", "conv", "bn", "avgpool", "flatten", "residual", "cat", "relu"} <= ops


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


def test_absdsl_check_cli_exit_codes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "absdsl", "check"]
    bad = subprocess.run(cmd + [str(_mutated_box(tmp_path)), "--examples", "15",
                                "--property", "bounds", "--shrink-seconds", "3"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAIL" in bad.stdout and "counterexample" in bad.stdout
    good = subprocess.run(cmd + [str(builtin_path("box.absd")), "--examples", "5",
                                 "--property", "bounds"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "PASS" in good.stdout
    missing = subprocess.run(cmd + [str(tmp_path / "nope.absd")], capture_output=True,
                             text=True, cwd=REPO, timeout=300)
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
