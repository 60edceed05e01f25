"""The VNN-LIB reader: boxes, output rows, disjunctions, and errors with line:col."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_helpers import vnnlib

from absdsl.verification.vnnlib import VnnlibError, parse_vnnlib

ROBUST = vnnlib([(0.25, 0.5), (-1.0, 0.0)], 3, "(or (>= Y_1 Y_0) (>= Y_2 Y_0))")


def test_box_and_disjunctive_rows() -> None:
    prop = parse_vnnlib(ROBUST, "p.vnnlib")
    assert (prop.num_inputs, prop.num_outputs) == (2, 3)
    (case,) = prop.cases
    np.testing.assert_array_equal(case.lo, [0.25, -1.0])
    np.testing.assert_array_equal(case.hi, [0.5, 0.0])
    assert len(case.polytopes) == 2
    # Y_1 >= Y_0  <=>  Y_0 - Y_1 <= 0
    np.testing.assert_array_equal(case.polytopes[0].A, [[1.0, -1.0, 0.0]])
    np.testing.assert_array_equal(case.polytopes[0].b, [0.0])
    np.testing.assert_array_equal(case.polytopes[1].A, [[1.0, 0.0, -1.0]])


def test_linear_terms_conjunctions_and_input_disjunctions() -> None:
    text = """; comment
(declare-const X_0 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)
(assert (or (and (>= X_0 0) (<= X_0 1) (<= (+ (* 2 Y_0) (- Y_1) 0.5) 3e-1) (< Y_1 1))
            (and (>= X_0 -2) (<= X_0 -1) (= Y_0 (* 0.5 Y_1)))))
"""
    prop = parse_vnnlib(text)
    assert len(prop.cases) == 2
    first, second = prop.cases
    np.testing.assert_array_equal(first.lo, [0.0])
    (p,) = first.polytopes
    np.testing.assert_allclose(p.A, [[2.0, -1.0], [0.0, 1.0]])
    np.testing.assert_allclose(p.b, [-0.2, 1.0])
    assert p.strict.tolist() == [False, True]
    # an equality is two rows
    np.testing.assert_allclose(second.polytopes[0].A, [[1.0, -0.5], [-1.0, 0.5]])
    assert p.holds(np.array([0.0, 0.5])) and not p.holds(np.array([0.0, 1.0]))


@pytest.mark.parametrize("text, where, message", [
    ("(declare-const X_0 Real)\n(assert (<= X_0 1.0)\n", "3:1", "unclosed '\\(' opened at 2:1"),
    ("(declare-const X_0 Real)\n(assert (<= X_0 1.O))", "2:17", "expected a number"),
    ("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= (* X_0 Y_0) 1))",
     "3:20", "not linear"),
    ("(declare-const X_0 Real)\n (assert (<= Z_0 1))", "2:14", "expected a number or"),
    ("(declare-const X_0 Real)\n(assert (<= Y_0 1))", "2:13", "Y_0 is not declared"),
    ("(declare-const X_0 Int)", "1:20", "only Real"),
    ("(declare-const X_0 Real))", "1:25", "unexpected '\\)'"),
    ("(declare-const X_0 Real)\n(assert (xor (<= X_0 1)))", "2:10", "unknown connective"),
    ("(declare-const X_0 Real)\n(check-sat)", "2:2", "unknown command"),
])
def test_syntax_errors_name_line_and_column(text: str, where: str, message: str) -> None:
    with pytest.raises(VnnlibError, match=f"^bad.vnnlib:{where}: .*{message}"):
        parse_vnnlib(text, "bad.vnnlib")


def test_property_shape_errors() -> None:
    decl = "(declare-const X_0 Real)\n(declare-const X_2 Real)\n(declare-const Y_0 Real)\n"
    with pytest.raises(VnnlibError, match="X_1 is missing"):
        parse_vnnlib(decl + "(assert (<= Y_0 0))")
    unbounded = vnnlib([(0.0, 1.0)], 1, "(<= Y_0 0)").replace("(assert (<= X_0 1.0))", "")
    with pytest.raises(VnnlibError, match="X_0 has no upper bound"):
        parse_vnnlib(unbounded)
    mixed = vnnlib([(0.0, 1.0)], 1, "(<= Y_0 X_0)")
    with pytest.raises(VnnlibError, match=r":\d+:\d+: a constraint mixing inputs and outputs"):
        parse_vnnlib(mixed)
    with pytest.raises(VnnlibError, match="no \\(assert"):
        parse_vnnlib("(declare-const X_0 Real)(declare-const Y_0 Real)")


def test_empty_boxes_are_dropped() -> None:
    text = vnnlib([(0.0, 1.0)], 1, "(or (and (>= X_0 2)) (<= Y_0 0))")
    prop = parse_vnnlib(text)
    assert prop.dropped_empty == 1 and len(prop.cases) == 1
