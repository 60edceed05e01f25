"""Two ways to evaluate a proof obligation: symbolically (z3 terms) or numerically (numpy).

The interpreter (:mod:`absdsl.prove.interp`) builds every obligation through one of these
back ends, so the formula the solver proves and the one the numeric grid tests are the same
code. Operations follow the generated torch programs: ``safe`` division replaces a zero
denominator by 1 (``rt.safe_div``, used inside guarded branches and relaxations), ``relu`` is
``max(x, 0)``, ``leaky_relu`` is ``x`` for ``x >= 0`` else ``a * x``, ``hardtanh`` clamps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np

# Functions the solver only knows through true facts: monotone non-decreasing, and a range.
MONOTONE_FUNCS = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "exp": (0.0, None),
                  "log": (None, None)}


class Backend:
    """The operations an obligation is built from; terms are opaque to the interpreter."""

    symbolic = False

    def record_guards(self, conds: list[list[Any]]) -> None:
        """Only the solver splits on guards."""

    def const(self, v: float) -> Any: raise NotImplementedError
    def add(self, a: Any, b: Any) -> Any: return a + b
    def sub(self, a: Any, b: Any) -> Any: return a - b
    def mul(self, a: Any, b: Any) -> Any: return a * b
    def neg(self, a: Any) -> Any: return -a
    def div(self, a: Any, b: Any, safe: bool) -> Any: raise NotImplementedError
    def ite(self, c: Any, a: Any, b: Any) -> Any: raise NotImplementedError
    def cmp(self, op: str, a: Any, b: Any) -> Any: raise NotImplementedError
    def and_(self, xs: list[Any]) -> Any: raise NotImplementedError
    def or_(self, xs: list[Any]) -> Any: raise NotImplementedError
    def not_(self, a: Any) -> Any: raise NotImplementedError
    def func(self, name: str, a: Any) -> Any: raise NotImplementedError

    def abs(self, a: Any) -> Any:
        return self.ite(self.cmp(">=", a, self.const(0.0)), a, self.neg(a))

    def max(self, a: Any, b: Any) -> Any:
        return self.ite(self.cmp(">=", a, b), a, b)

    def min(self, a: Any, b: Any) -> Any:
        return self.ite(self.cmp("<=", a, b), a, b)

    def activation(self, op: str, x: Any, params: dict[str, Any]) -> Any:
        """The op's concrete semantics (what ``f`` means in a rule or relaxation)."""
        zero = self.const(0.0)
        if op == "relu":
            return self.max(x, zero)
        if op == "leaky_relu":
            return self.ite(self.cmp(">=", x, zero), x, self.mul(params["negative_slope"], x))
        if op == "hardtanh":
            return self.min(self.max(x, params["min_val"]), params["max_val"])
        if op in ("sigmoid", "tanh"):
            return self.func(op, x)
        raise ValueError(f"no semantics for activation {op!r}")


class Z3Backend(Backend):
    """z3 real terms; non-polynomial functions are uninterpreted, with monotonicity facts."""

    symbolic = True

    def __init__(self) -> None:
        import z3  # lazy: optional dependency z3

        self.z3 = z3
        self.facts: list[Any] = []  # side conditions (sqrt) and function facts
        self.funcs: dict[str, Any] = {}
        self.apps: dict[str, list[Any]] = {}
        self.n_fresh = 0
        self.guard_chains: list[list[list[Any]]] = []  # guarded statements: conds per branch

    def record_guards(self, conds: list[list[Any]]) -> None:
        """A guarded statement's conditions (per branch, per neuron): the solver splits on
        them, one query per first-matching branch (nonlinear arithmetic needs the split)."""
        self.guard_chains.append(conds)

    def const(self, v: float) -> Any:
        fr = Fraction(float(v))
        return self.z3.Q(fr.numerator, fr.denominator)

    def var(self, name: str) -> Any:
        return self.z3.Real(name)

    def div(self, a: Any, b: Any, safe: bool) -> Any:
        if safe:
            return self.z3.If(b == 0, a, a / b)
        return a / b  # z3 leaves a / 0 unspecified: a proof then holds for every value

    def ite(self, c: Any, a: Any, b: Any) -> Any:
        return self.z3.If(c, a, b)

    def cmp(self, op: str, a: Any, b: Any) -> Any:
        return {"<=": lambda: a <= b, ">=": lambda: a >= b, "<": lambda: a < b,
                ">": lambda: a > b, "==": lambda: a == b, "!=": lambda: a != b}[op]()

    def and_(self, xs: list[Any]) -> Any:
        return self.z3.And(*xs) if xs else self.z3.BoolVal(True)

    def or_(self, xs: list[Any]) -> Any:
        return self.z3.Or(*xs) if xs else self.z3.BoolVal(False)

    def not_(self, a: Any) -> Any:
        return self.z3.Not(a)

    def func(self, name: str, a: Any) -> Any:
        if name == "sqrt":  # s >= 0 and s * s = a where a >= 0 (torch gives NaN below 0)
            self.n_fresh += 1
            s = self.z3.Real(f"sqrt_{self.n_fresh}")
            self.facts.append(self.z3.Implies(a >= 0, self.z3.And(s >= 0, s * s == a)))
            return s
        if name not in MONOTONE_FUNCS:
            raise ValueError(f"no symbolic form for {name}")
        fn = self.funcs.get(name)
        if fn is None:
            fn = self.funcs[name] = self.z3.Function(name, self.z3.RealSort(),
                                                     self.z3.RealSort())
        app = fn(a)
        self.apps.setdefault(name, []).append((a, app))
        return app

    def function_facts(self) -> list[Any]:
        """Facts true of every real sigmoid/tanh/exp/log, instantiated on the terms used:
        monotone non-decreasing between every pair of arguments, values in the range."""
        out = []
        for name, apps in self.apps.items():
            lo, hi = MONOTONE_FUNCS[name]
            for i, (a, fa) in enumerate(apps):
                if lo is not None:
                    out.append(fa > self.const(lo))
                if hi is not None:
                    out.append(fa < self.const(hi))
                for b, fb in apps[i + 1:]:
                    out.append(self.z3.Implies(a <= b, fa <= fb))
                    out.append(self.z3.Implies(b <= a, fb <= fa))
        return out

    def uses_functions(self) -> bool:
        return bool(self.apps)


_NP_FUNCS: dict[str, Callable[[Any], Any]] = {
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)), "tanh": np.tanh, "exp": np.exp,
    "log": np.log, "sqrt": np.sqrt}


class NumpyBackend(Backend):
    """float64 arrays, one entry per sample point: the numeric test of the same formula."""

    def const(self, v: float) -> Any:
        return np.float64(v)

    def div(self, a: Any, b: Any, safe: bool) -> Any:
        with np.errstate(divide="ignore", invalid="ignore"):
            if safe:
                return a / np.where(b == 0, 1.0, b)
            return a / b

    def ite(self, c: Any, a: Any, b: Any) -> Any:
        return np.where(c, a, b)

    def cmp(self, op: str, a: Any, b: Any) -> Any:
        with np.errstate(invalid="ignore"):
            return {"<=": np.less_equal, ">=": np.greater_equal, "<": np.less,
                    ">": np.greater, "==": np.equal, "!=": np.not_equal}[op](a, b)

    def and_(self, xs: list[Any]) -> Any:
        out: Any = True
        for x in xs:
            out = np.logical_and(out, x)
        return out

    def or_(self, xs: list[Any]) -> Any:
        out: Any = False
        for x in xs:
            out = np.logical_or(out, x)
        return out

    def not_(self, a: Any) -> Any:
        return np.logical_not(a)

    def func(self, name: str, a: Any) -> Any:
        with np.errstate(all="ignore"):
            return _NP_FUNCS[name](a)

    def abs(self, a: Any) -> Any:
        return np.abs(a)


def model_value(model: Any, term: Any) -> float:
    """A z3 model's value of a real term as a float (algebraic numbers approximated)."""
    import z3  # lazy: optional dependency z3

    v = model.eval(term, model_completion=True)
    if z3.is_rational_value(v):
        return v.numerator_as_long() / v.denominator_as_long()
    if z3.is_algebraic_value(v):
        a = v.approx(20)
        return a.numerator_as_long() / a.denominator_as_long()
    try:
        return float(v.as_decimal(20).rstrip("?"))
    except (AttributeError, ValueError):
        return math.nan
