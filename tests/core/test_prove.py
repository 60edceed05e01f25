"""``absdsl prove``: z3 proofs of the built-in rules, refutations of subtly broken ones with
counterexamples that really break them, the numeric fallback, and the command's exit codes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from absdsl.cli import main
from absdsl.dsl.loader import builtin_path
from absdsl.prove import prove_file, solver_available

# z3-solver is a dev dependency (pyproject.toml): without it these tests fail, never skip
assert solver_available(), "pip install z3-solver (in the dev extra) to run the proof tests"

DOMAINS = Path(str(builtin_path("box.absd"))).parent


def _text(name: str) -> str:
    return (DOMAINS / name).read_text()


# (file, obligations, those that read f's derivative or curvature: the generic activation
# rules and relaxations, which the prover cannot decide and absdsl check samples)
@pytest.mark.parametrize("name, n_rules, n_derivative", [
    ("box.absd", 8, 0), ("hbox.absd", 8, 4), ("zonotope.absd", 8, 4), ("relax.absd", 18, 6),
    ("deeppoly.absd", 26, 6), ("crown-ibp.absd", 26, 6)])
def test_every_builtin_rule_is_proved(name, n_rules, n_derivative):
    report = prove_file(DOMAINS / name)
    assert len(report.results) == n_rules
    undecided = [r for r in report.results if r.status != "proved"]
    assert len(undecided) == n_derivative, report.format()
    for r in undecided:
        assert r.status == "not provable here" and "derivative or curvature" in r.detail, r


def test_sigmoid_and_tanh_are_proved_from_monotonicity_only():
    report = prove_file(DOMAINS / "box.absd")
    sig = next(r for r in report.results if r.name == "Box rule monotone [sigmoid]")
    assert sig.status == "proved" and "monotone non-decreasing sigmoid" in sig.detail


def _mutant(tmp_path: Path, base: str, old: str, new: str) -> Path:
    text = _text(base)
    assert old in text
    path = tmp_path / f"mutant_{base}"
    path.write_text(text.replace(old, new))
    return path


def _relu(x: float) -> float:
    return max(x, 0.0)


MUTANTS = [
    # (file, old, new, the rule that must be refuted)
    ("box.absd", "l = m - s", "l = m", "Box rule affine"),
    ("box.absd", "rule add(p, q) continuous { l = p.l + q.l",
     "rule add(p, q) continuous { l = p.l + 0.999 * q.l", "Box rule add"),
    ("zonotope.absd", "when l >= 0 { }", "when l >= -0.05 { }", "Zonotope rule relu"),
    ("zonotope.absd", "G = p.G + q.G", "G = p.G - q.G", "Zonotope rule add"),
    # the interval hull is unchanged: only the correlated reading of generators sees it
    ("zonotope.absd", "G = lam * G + newgens(mu)", "G = -lam * G + newgens(mu)",
     "Zonotope rule relu"),
    ("zonotope.absd", "mu = -lam * l / 2", "mu = -lam * l / 2 * 0.99", "Zonotope rule relu"),
    ("hbox.absd", "else { c = u / 2; G = 0; beta = u / 2 }",
     "else { c = u / 2; G = 0; beta = u / 2 * 0.995 }", "HBox rule relu"),
    ("relax.absd", "upper u / (u - l) * (x - l)", "upper 0.99 * u / (u - l) * (x - l)",
     "relax relu else"),
    ("relax.absd", "when l >= 0: lower x, upper x\n  else: lower (u > -l ? x : negative_slope",
     "when l >= 0: lower x, upper x\n  else: lower (u > -l ? x : 0.5", "relax leaky_relu else"),
]


@pytest.mark.parametrize("base, old, new, rule", MUTANTS)
def test_subtle_mutants_are_refuted_with_a_real_counterexample(tmp_path, base, old, new, rule):
    report = prove_file(_mutant(tmp_path, base, old, new))
    refuted = {r.name: r for r in report.results if r.status == "refuted"}
    assert set(refuted) == {rule}, report.format()
    cex = refuted[rule].counterexample
    assert cex is not None and cex["lhs"] > cex["rhs"]  # the claim lhs <= rhs fails


def test_relu_relaxation_counterexample_breaks_the_line(tmp_path):
    """The printed numbers, put back into the mutated line, violate f(x) <= upper(x)."""
    path = _mutant(tmp_path, "relax.absd", "upper u / (u - l) * (x - l)",
                   "upper 0.99 * u / (u - l) * (x - l)")
    res = next(r for r in prove_file(path).results if r.name == "relax relu else")
    c = res.counterexample
    assert c is not None and c["l"] < 0 < c["u"] and c["l"] <= c["x"] <= c["u"]
    upper = 0.99 * c["u"] / (c["u"] - c["l"]) * (c["x"] - c["l"])
    assert _relu(c["x"]) > upper + 1e-12


SIGMOID_TANGENT = """
relax sigmoid(x; l, u) {
  when l >= 0: lower f(l) + (f(u) - f(l)) / (u - l) * (x - l), upper f(u)
  else: lower f(l), upper f(u)
}
domain D { bounds backsub  output backsub }
"""


def test_a_sound_non_polynomial_rule_is_not_provable_and_tested_instead(tmp_path):
    """The chord under sigmoid on [l, u], l >= 0 (sigmoid is concave there) is sound, but
    monotonicity does not prove it: reported as not provable, with the grid it passed."""
    path = tmp_path / "sig.absd"
    path.write_text(SIGMOID_TANGENT)
    res = next(r for r in prove_file(path).results if r.name == "relax sigmoid case 1")
    assert res.status == "not provable here"
    assert "not polynomial" in res.detail and "tested instead on" in res.detail


def test_an_unsound_non_polynomial_rule_is_refuted_at_a_point_checked_in_float64(tmp_path):
    path = tmp_path / "sig.absd"
    path.write_text(SIGMOID_TANGENT.replace("when l >= 0", "when u <= 0"))  # convex there
    res = next(r for r in prove_file(path).results if r.name == "relax sigmoid case 1")
    assert res.status == "refuted"
    c = res.counterexample
    assert c is not None and c["u"] <= 0

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    chord = sig(c["l"]) + (sig(c["u"]) - sig(c["l"])) / (c["u"] - c["l"]) * (c["x"] - c["l"])
    assert chord > sig(c["x"])


def test_prove_command_exit_codes(tmp_path, capsys):
    assert main(["prove", "zonotope"]) == 0
    assert "4 proved, 0 refuted" in capsys.readouterr().out
    bad = _mutant(tmp_path, "zonotope.absd", "G = p.G + q.G", "G = p.G - q.G")
    assert main(["prove", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "Zonotope rule add" in out and "refuted" in out and "counterexample:" in out
    broken = tmp_path / "syntax.absd"
    broken.write_text("domain X {\n  state { l: bound; u: bound }\n  gamma { l <= x <= }\n}\n")
    assert main(["prove", str(broken)]) == 2
    assert f"{broken}:3:21" in capsys.readouterr().err


def test_prove_without_the_solver_says_how_to_install_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "z3", None)  # import z3 now fails
    assert main(["prove", "box"]) == 2
    assert "pip install z3-solver" in capsys.readouterr().err


def test_check_runs_the_proofs_first_and_fails_on_a_refuted_rule(tmp_path, capsys,
                                                                 monkeypatch):
    """A guard shifted by 1e-3 (active from l >= -1e-3): refuted by the proof even when
    the property tests, at 2 examples, do not find it."""
    monkeypatch.setenv("ABSDSL_CHECK_CACHE", str(tmp_path / "cache.json"))
    bad = _mutant(tmp_path, "zonotope.absd", "when l >= 0 { }", "when l >= -0.001 { }")
    assert main(["check", str(bad), "--examples", "2", "--shrink-seconds", "2"]) == 1
    out = capsys.readouterr().out
    assert out.index("Zonotope rule relu") < out.index("sound:")  # proofs first
    assert "refuted" in out and "FAILED: a rule is refuted" in out
    assert not (tmp_path / "cache.json").exists()
