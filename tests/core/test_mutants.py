"""The checker's strength, measured: mutants of the built-in domain files.

Every mutant is a text edit of a file in ``domains/`` (one table, :data:`MUTANTS`), applied
to a fresh copy of the built-in files at test time, so the mutants cannot drift from the
files they mutate. ``sound=False``: the edit makes the domain unsound and
``absdsl.soundness.check_domain`` with its default settings must report a counterexample;
``sound=True``: a sound (looser or merely different) variant that must pass.

CI runs :data:`CI_SUBSET` (about a minute and a half). The full run is
``ABSDSL_MUTANTS=1 python -m pytest -m mutants tests/core/test_mutants.py`` or
``python benchmarks/mutants.py`` (its measured result is in docs/testing.md).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from absdsl.dsl.loader import builtin_path
from absdsl.soundness import check_domain, guard_surfaces


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str        # the built-in file edited
    old: str         # text that occurs exactly once in it
    new: str
    kind: str        # the rule kind and what is wrong
    sound: bool = False

    @property
    def checked(self) -> str:
        """The domain file checked: relaxations are checked through DeepPoly."""
        return "deeppoly.absd" if self.file == "relax.absd" else self.file


_RELU_HEAD = "when u <= 0: lower 0, upper 0\n  when l >= 0: lower x, upper x"
_UPPER = "upper u / (u - l) * (x - l)"

MUTANTS: tuple[Mutant, ...] = (
    # ---- Box: affine, add, monotone --------------------------------------------------------
    Mutant("box-lower-radius-1%", "box.absd", "    l = m - s\n", "    l = m - 0.99 * s\n",
           "affine: slope (radius) of the lower bound shrunk 1 %"),
    Mutant("box-upper-radius-0.1%", "box.absd", "    u = m + s\n", "    u = m + 0.999 * s\n",
           "affine: radius of the upper bound shrunk 0.1 %"),
    Mutant("box-centre-offset", "box.absd", "    c = (u + l) / 2\n",
           "    c = (u + 1.001 * l) / 2\n", "affine: centre off by 0.05 % of l"),
    Mutant("box-tiny-radius-dropped", "box.absd", "    r = (u - l) / 2\n",
           "    r = (u - l > 1e-4 ? (u - l) / 2 : 0)\n",
           "affine: wrong only on tiny boxes (width under 1e-4)"),
    Mutant("box-huge-radius-capped", "box.absd", "    s = |W| @ r\n",
           "    s = |W| @ min(r, 100)\n", "affine: wrong only on huge boxes (radius over 100)"),
    Mutant("box-add-1%", "box.absd", "l = p.l + q.l", "l = p.l + 0.99 * q.l",
           "add: one input's lower bound scaled by 0.99"),
    Mutant("box-add-sign", "box.absd", "u = p.u + q.u", "u = p.u - q.u", "add: sign"),
    Mutant("box-leaky-as-relu", "box.absd", "  rule monotone",
           "  rule relu, leaky_relu continuous { l = max(l, 0); u = max(u, 0) }\n"
           "  rule monotone", "activation: wrong only for leaky_relu (slope > 0)"),
    Mutant("box-hardtanh-cap-1", "box.absd", "  rule monotone",
           "  rule hardtanh continuous { l = f(l); u = min(u, 1) }\n  rule monotone",
           "activation: wrong only for hardtanh with max_val > 1 or min_val > u"),
    Mutant("box-monotone-upper-0.1%", "box.absd", "u = f(u) }", "u = 0.999 * f(u) }",
           "activation: upper bound shrunk 0.1 % (wrong where f(u) > 0)"),
    Mutant("box-looser-radius", "box.absd", "    s = |W| @ r\n", "    s = 1.01 * (|W| @ r)\n",
           "affine: radius 1 % larger", sound=True),
    Mutant("box-relu-rule-exact", "box.absd", "  rule monotone",
           "  rule relu continuous { l = max(l, 0); u = max(u, 0) }\n  rule monotone",
           "activation: a separate, exact ReLU rule", sound=True),
    Mutant("box-looser-lower", "box.absd", "l = f(l);", "l = f(l) - 1e-3 * |f(l)|;",
           "activation: lower bound 0.1 % lower", sound=True),
    # ---- HBox: relu guards and cases, add, affine ---------------------------------------------
    Mutant("hbox-active-guard-minus-1e-3", "hbox.absd", "    when l >= 0 { }",
           "    when l >= -1e-3 { }", "relu guard l >= 0 shifted to the unsound side"),
    Mutant("hbox-inactive-guard-plus-1e-3", "hbox.absd", "when u <= 0 {", "when u <= 1e-3 {",
           "relu guard u <= 0 shifted to the unsound side"),
    Mutant("hbox-inactive-guard-minus-1e-3", "hbox.absd", "when u <= 0 {",
           "when u <= -1e-3 {", "relu guard u <= 0 shifted inwards: [0, u] with u < 0"),
    Mutant("hbox-box-beta-0.5%", "hbox.absd", "G = 0; beta = u / 2 }",
           "G = 0; beta = 0.995 * u / 2 }", "relu unstable case: offset shrunk 0.5 %"),
    Mutant("hbox-add-beta-1%", "hbox.absd", "beta = p.beta + q.beta",
           "beta = p.beta + 0.99 * q.beta", "add: one input's box part scaled by 0.99"),
    Mutant("hbox-affine-beta-sign", "hbox.absd", "beta = |W| @ beta", "beta = W @ beta",
           "affine: W instead of |W| on the box part"),
    Mutant("hbox-tiny-u", "hbox.absd", "G = 0; beta = u / 2 }",
           "G = 0; beta = (u > 1e-4 ? u / 2 : 0) }",
           "relu unstable case: wrong only on tiny boxes (u under 1e-4)"),
    Mutant("hbox-looser-active-guard", "hbox.absd", "    when l >= 0 { }",
           "    when l >= 1e-3 { }", "relu guard moved to the sound side", sound=True),
    Mutant("hbox-looser-beta", "hbox.absd", "G = 0; beta = u / 2 }",
           "G = 0; beta = 1.001 * u / 2 }", "relu unstable case: box 0.1 % wider", sound=True),
    # ---- Zonotope: relu guards, slope, offset, add, affine --------------------------------------
    Mutant("zono-active-guard-minus-0.05", "zonotope.absd", "    when l >= 0 { }",
           "    when l >= -0.05 { }", "relu guard l >= 0 shifted by 0.05 (the issue's)"),
    Mutant("zono-active-guard-minus-1e-4", "zonotope.absd", "    when l >= 0 { }",
           "    when l >= -1e-4 { }", "relu guard l >= 0 shifted by 1e-4"),
    Mutant("zono-inactive-guard-plus-1e-4", "zonotope.absd", "when u <= 0 {",
           "when u <= 1e-4 {", "relu guard u <= 0 shifted to the unsound side"),
    Mutant("zono-slope-0.5%", "zonotope.absd", "      lam = u / (u - l)\n",
           "      lam = 0.995 * u / (u - l)\n",
           "relu: slope shrunk 0.5 %"),
    Mutant("zono-offset-1%", "zonotope.absd", "mu = -lam * l / 2", "mu = -0.99 * lam * l / 2",
           "relu: offset shrunk 1 %"),
    Mutant("zono-add-sign", "zonotope.absd", "G = p.G + q.G", "G = p.G - q.G",
           "add: sign of one input's generators (the issue's)"),
    Mutant("zono-affine-bias-1%", "zonotope.absd", "c = W @ c + b", "c = W @ c + 0.99 * b",
           "affine: bias shrunk 1 %"),
    Mutant("zono-tiny-eps", "zonotope.absd", "      lam = u / (u - l)\n",
           "      lam = u / (u - l + 1e-9)\n",
           "relu: an epsilon in the denominator, wrong only on tiny boxes"),
    Mutant("zono-huge-offset-capped", "zonotope.absd", "mu = -lam * l / 2",
           "mu = -lam * max(l, -100) / 2", "relu: wrong only on huge boxes (l under -100)"),
    Mutant("zono-degenerate-exact", "zonotope.absd", "    when u <= 0 {",
           "    when u - l <= 0 { }\n    when u <= 0 {",
           "relu: a point neuron kept as is, wrong only on degenerate boxes below 0"),
    # found by the checker: sound for l < u, but a point neuron (l = u in (0, 1e-3)) then
    # reaches the unstable case, whose slope u / (u - l) meets the safe denominator
    Mutant("zono-active-guard-plus-1e-3", "zonotope.absd", "    when l >= 0 { }",
           "    when l >= 1e-3 { }",
           "relu guard l >= 0 moved inwards: wrong only on degenerate boxes in (0, 1e-3)"),
    Mutant("zono-looser-inactive-guard", "zonotope.absd", "when u <= 0 {", "when u <= -1e-3 {",
           "relu guard moved to the sound side", sound=True),
    Mutant("zono-looser-offset", "zonotope.absd", "mu = -lam * l / 2", "mu = -1.01 * lam * l / 2",
           "relu: offset 1 % larger", sound=True),
    # ---- relaxations (checked through DeepPoly) -----------------------------------------------
    Mutant("relax-relu-active-minus-1e-3", "relax.absd", _RELU_HEAD,
           _RELU_HEAD.replace("l >= 0", "l >= -1e-3"), "relu guard l >= 0 to the unsound side"),
    Mutant("relax-relu-inactive-plus-1e-3", "relax.absd", _RELU_HEAD,
           _RELU_HEAD.replace("u <= 0", "u <= 1e-3"), "relu guard u <= 0 to the unsound side"),
    Mutant("relax-relu-active-plus-1e-3", "relax.absd", _RELU_HEAD,
           _RELU_HEAD.replace("l >= 0", "l >= 1e-3"),
           "relu guard l >= 0 inwards: the chord misses f at x = l > 0"),
    Mutant("relax-relu-inactive-minus-1e-3", "relax.absd", _RELU_HEAD,
           _RELU_HEAD.replace("u <= 0", "u <= -1e-3"),
           "relu guard u <= 0 inwards: the chord dips below 0"),
    Mutant("relax-relu-upper-slope-0.1%", "relax.absd", _UPPER,
           "upper 0.999 * u / (u - l) * (x - l)", "relu upper line: slope shrunk 0.1 %"),
    Mutant("relax-relu-upper-offset-1%", "relax.absd", _UPPER, "upper u / (u - l) * (x - 0.99 * l)",
           "relu upper line: offset shrunk 1 %"),
    Mutant("relax-relu-tiny-eps", "relax.absd", _UPPER, "upper u / (u - l + 1e-9) * (x - l)",
           "relu upper line: an epsilon in the denominator, wrong only on tiny boxes"),
    Mutant("relax-relu-huge", "relax.absd", _UPPER,
           "upper u / max(u - l, 1e-3 * (u - l) * (u - l)) * (x - l)",
           "relu upper line: wrong only on huge boxes (width over 1e3)"),
    Mutant("relax-relu-lower-sign", "relax.absd", "lower (u > -l ? x : 0), upper u",
           "lower (u > -l ? x : -0.01 * x), upper u", "relu lower line: sign of a small slope"),
    Mutant("relax-relu-degenerate", "relax.absd", "  when u <= 0: lower 0, upper 0",
           "  when u - l <= 0: lower x, upper x\n  when u <= 0: lower 0, upper 0",
           "relu: a point neuron kept as is, wrong only on degenerate boxes below 0"),
    Mutant("relax-leaky-chord-0.1%", "relax.absd",
           "negative_slope * x), upper f(l) + (f(u) - f(l)) / (u - l) * (x - l)",
           "negative_slope * x), upper f(l) + 0.999 * (f(u) - f(l)) / (u - l) * (x - l)",
           "leaky_relu upper line: slope shrunk 0.1 % (wrong only for leaky_relu)"),
    Mutant("relax-leaky-inactive-lower-1%", "relax.absd",
           "when u <= 0: lower negative_slope * x,",
           "when u <= 0: lower 0.99 * negative_slope * x,",
           "leaky_relu inactive case: lower slope shrunk 1 % (wrong only for slope > 0)"),
    Mutant("relax-hardtanh-only", "relax.absd",
           "min_val), upper f(l) + (f(u) - f(l)) / (u - l) * (x - l)",
           "min_val), upper f(l) + 0.999 * (f(u) - f(l)) / (u - l) * (x - l)",
           "hardtanh chord at the lower kink shrunk 0.1 % (wrong only for hardtanh)"),
    Mutant("relax-tangent-raised", "relax.absd",
           "when convex(l, u): lower f((l + u) / 2)",
           "when convex(l, u): lower 1e-3 * (u - l) + f((l + u) / 2)",
           "smooth activations: the tangent below a convex part raised by 0.1 % of the width"),
    Mutant("relax-dmin-steeper", "relax.absd", "else: lower f(l) + dmin(l, u) * (x - l)",
           "else: lower f(l) + 1.01 * dmin(l, u) * (x - l)",
           "smooth activations across an inflection: lower line 1 % steeper than min f'"),
    Mutant("relax-zero-lower-slope", "relax.absd", "lower (u > -l ? x : 0), upper u",
           "lower 0, upper u", "relu lower slope always 0", sound=True),
    Mutant("relax-other-adaptive-guard", "relax.absd", "lower (u > -l ? x : 0), upper u",
           "lower (u > -0.5 * l ? x : 0), upper u", "relu adaptive slope switches elsewhere",
           sound=True),
    Mutant("relax-looser-upper", "relax.absd", _UPPER, "upper 1.001 * u / (u - l) * (x - l)",
           "relu upper line 0.1 % steeper", sound=True),
    Mutant("relax-leaky-fixed-lower", "relax.absd",
           "lower (u > -l ? x : negative_slope * x)", "lower negative_slope * x",
           "leaky_relu lower line always a * x", sound=True),
    Mutant("relax-relu-strict-active", "relax.absd", _RELU_HEAD,
           _RELU_HEAD.replace("l >= 0", "l > 0"), "relu: l = 0 relaxed, not exact", sound=True),
)

BY_NAME = {m.name: m for m in MUTANTS}

#: CI: a fixed, representative subset (each rule kind; the issue's two; tiny, huge,
#: degenerate, one activation only; one sound variant), about 90 s on 2 cores
CI_SUBSET = ("zono-active-guard-minus-0.05", "zono-add-sign", "box-tiny-radius-dropped",
             "relax-relu-tiny-eps", "hbox-add-beta-1%", "relax-hardtanh-only",
             "zono-degenerate-exact")


def write_mutant(m: Mutant, folder: Path) -> Path:
    """Copy the built-in files into ``folder``, apply the edit, return the file to check."""
    for name in ("box.absd", "hbox.absd", "zonotope.absd", "relax.absd", "deeppoly.absd",
                 "crown-ibp.absd"):
        shutil.copy(builtin_path(name), folder / name)
    text = (folder / m.file).read_text()
    count = text.count(m.old)
    if count != 1:
        raise AssertionError(f"mutant {m.name}: {m.old!r} occurs {count} times in {m.file}")
    (folder / m.file).write_text(text.replace(m.old, m.new))
    return folder / m.checked


def test_table_is_what_the_issue_asks() -> None:
    unsound = [m for m in MUTANTS if not m.sound]
    assert len(unsound) >= 30 and sum(m.sound for m in MUTANTS) >= 5
    files = {m.file for m in unsound}
    assert files == {"box.absd", "hbox.absd", "zonotope.absd", "relax.absd"}
    kinds = " ".join(m.kind for m in unsound)
    for word in ("affine", "add", "guard", "slope", "offset", "sign", "tiny", "huge",
                 "degenerate", "only for"):
        assert word in kinds, word
    assert len(BY_NAME) == len(MUTANTS)
    assert set(CI_SUBSET) <= set(BY_NAME)


@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_every_edit_applies_and_parses(name: str, tmp_path: Path) -> None:
    """Each edit occurs once in the current built-in file and gives a valid domain."""
    from absdsl.dsl.loader import load_domain

    path = write_mutant(BY_NAME[name], tmp_path)
    loaded = load_domain(str(path))
    assert guard_surfaces(loaded)  # l = 0, u = 0, u = -l at least


def test_guard_constants_are_read_from_the_ast(tmp_path: Path) -> None:
    """The shifted guard's constant becomes a surface the checker aims at."""
    from absdsl.dsl.loader import load_domain

    path = write_mutant(BY_NAME["zono-active-guard-minus-0.05"], tmp_path)
    surfaces = guard_surfaces(load_domain(str(path)))
    assert any(s.a == 1 and s.b == 0 and abs(s.c - 0.05) < 1e-15 for s in surfaces)
    path = write_mutant(BY_NAME["box-tiny-radius-dropped"], tmp_path)
    widths = [s for s in guard_surfaces(load_domain(str(path))) if s.a == -s.b]
    assert widths and abs(abs(widths[0].c) - 1e-4) < 1e-18  # u - l = 1e-4


def _run(name: str, tmp_path: Path, shrink_seconds: float = 30.0) -> None:
    m = BY_NAME[name]
    report = check_domain(str(write_mutant(m, tmp_path)), shrink_seconds=shrink_seconds,
                          stop_on_failure=not m.sound)
    if m.sound:
        assert report.ok, f"sound mutant {name} ({m.kind}) flagged:\n{report.format()}"
    else:
        assert not report.ok, f"unsound mutant {name} ({m.kind}) not caught:\n{report.format()}"


@pytest.mark.parametrize("name", CI_SUBSET)
def test_ci_subset_caught(name: str, tmp_path: Path) -> None:
    _run(name, tmp_path, shrink_seconds=3.0)


@pytest.mark.mutants
@pytest.mark.skipif(not os.environ.get("ABSDSL_MUTANTS"),
                    reason="the full mutation run (about 40 min): ABSDSL_MUTANTS=1 or "
                           "python benchmarks/mutants.py")
@pytest.mark.parametrize("name", [m.name for m in MUTANTS])
def test_full_mutation_run(name: str, tmp_path: Path) -> None:
    _run(name, tmp_path)
