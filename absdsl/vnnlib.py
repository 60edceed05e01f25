"""VNN-LIB properties (the VNN-COMP format, VNN-LIB 1.0) parsed into input boxes and polytopes.

A property file declares the network's inputs ``X_0 .. X_{n-1}`` and outputs ``Y_0 ..
Y_{m-1}`` (``(declare-const X_0 Real)``) and asserts constraints that together describe a
**counterexample**: ``sat`` means some input satisfies all of them, ``unsat`` means the
property holds. Assertions are linear (in)equalities over the variables combined with
``and``/``or``; this module puts their conjunction in disjunctive normal form and splits each
disjunct into an input box (bounds on single ``X_i``) and output rows ``A y <= b``.

The parser is a small recursive-descent S-expression reader written here: the ``vnnlib``
package on the index (1.0.x) reads VNN-LIB 2.0 only and rejects the competition's files at
their first ``declare-const``. Errors name ``file:line:col``. The text is parsed, never
evaluated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from absdsl.errors import InputError

MAX_DISJUNCTS = 100_000  # the DNF of a property larger than this is refused (memory)
_VAR = re.compile(r"^([XY])_(\d+)$")
_NUMBER = re.compile(r"^[+-]?((\d+(\.\d*)?)|(\.\d+))([eE][+-]?\d+)?$")


class VnnlibError(InputError):
    """A property file that cannot be read or does not fit the network (file:line:col)."""


@dataclass(frozen=True)
class _Atom:
    text: str
    line: int
    col: int


@dataclass
class _List:
    items: list[_Atom | _List]
    line: int
    col: int


_Expr = _Atom | _List


@dataclass
class Polytope:
    """Output rows ``A y <= b`` (``strict[i]``: ``<`` instead of ``<=``)."""

    A: np.ndarray  # [rows, outputs]
    b: np.ndarray  # [rows]
    strict: np.ndarray  # [rows] bool

    def holds(self, y: np.ndarray, slack: float = 0.0) -> bool:
        """Does output ``y`` satisfy every row (with ``slack`` of room)?"""
        v = self.A @ y - self.b
        return bool(np.all(np.where(self.strict, v < slack, v <= slack)))

    def violation(self, y: np.ndarray) -> float:
        """max_i (A y - b)_i: negative inside the polytope."""
        if self.A.shape[0] == 0:
            return -math.inf
        return float(np.max(self.A @ y - self.b))


@dataclass
class Case:
    """One input box with the output polytopes that a counterexample may reach from it."""

    lo: np.ndarray  # [inputs]
    hi: np.ndarray
    polytopes: list[Polytope] = field(default_factory=list)


@dataclass
class Property:
    path: str
    num_inputs: int
    num_outputs: int
    cases: list[Case]
    dropped_empty: int = 0  # disjuncts with an empty input box or a false constant


# ---- reading S-expressions -----------------------------------------------------------------

class _Reader:
    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.pos = 0
        self.line = 1
        self.col = 1

    def error(self, message: str, line: int | None = None, col: int | None = None) -> VnnlibError:
        return VnnlibError(f"{self.path}:{line or self.line}:{col or self.col}: {message}")

    def _advance(self, n: int = 1) -> None:
        for _ in range(n):
            if self.text[self.pos] == "\n":
                self.line += 1
                self.col = 1
            else:
                self.col += 1
            self.pos += 1

    def _skip(self) -> None:
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == ";":
                while self.pos < len(self.text) and self.text[self.pos] != "\n":
                    self._advance()
            elif ch.isspace():
                self._advance()
            else:
                return

    def forms(self) -> list[_Expr]:
        out: list[_Expr] = []
        while True:
            self._skip()
            if self.pos >= len(self.text):
                return out
            if self.text[self.pos] == ")":
                raise self.error("unexpected ')'")
            out.append(self.expr())

    def expr(self) -> _Expr:
        self._skip()
        if self.pos >= len(self.text):
            raise self.error("unexpected end of file")
        line, col = self.line, self.col
        if self.text[self.pos] == "(":
            self._advance()
            items: list[_Expr] = []
            while True:
                self._skip()
                if self.pos >= len(self.text):
                    raise self.error(f"unclosed '(' opened at {line}:{col}")
                if self.text[self.pos] == ")":
                    self._advance()
                    return _List(items, line, col)
                items.append(self.expr())
        start = self.pos
        while (self.pos < len(self.text) and not self.text[self.pos].isspace()
               and self.text[self.pos] not in "();"):
            self._advance()
        return _Atom(self.text[start:self.pos], line, col)


# ---- linear forms --------------------------------------------------------------------------

@dataclass
class _Linear:
    """sum coeffs[var] * var + const."""

    coeffs: dict[tuple[str, int], float]
    const: float

    def scaled(self, k: float) -> _Linear:
        return _Linear({v: k * c for v, c in self.coeffs.items()}, k * self.const)

    def plus(self, other: _Linear) -> _Linear:
        coeffs = dict(self.coeffs)
        for v, c in other.coeffs.items():
            coeffs[v] = coeffs.get(v, 0.0) + c
        return _Linear(coeffs, self.const + other.const)


@dataclass(frozen=True)
class _Ineq:
    """lhs <= 0 (or < 0 when strict); where the atom was written, for messages."""

    lhs: _Linear
    strict: bool
    line: int
    col: int


class _Parser:
    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.declared: dict[tuple[str, int], tuple[int, int]] = {}

    def err(self, node: _Expr, message: str) -> VnnlibError:
        return self.r.error(message, node.line, node.col)

    def declare(self, form: _List) -> None:
        if len(form.items) != 3 or not all(isinstance(i, _Atom) for i in form.items[1:]):
            raise self.err(form, "expected (declare-const NAME Real)")
        name, kind = form.items[1], form.items[2]
        assert isinstance(name, _Atom) and isinstance(kind, _Atom)
        m = _VAR.match(name.text)
        if m is None:
            raise self.err(name, f"variable {name.text!r}: names must be X_i (inputs) or "
                                 f"Y_j (outputs)")
        if kind.text != "Real":
            raise self.err(kind, f"variable {name.text}: type {kind.text!r}; only Real")
        key = (m.group(1), int(m.group(2)))
        if key in self.declared:
            line, col = self.declared[key]
            raise self.err(name, f"{name.text} is declared twice (first at {line}:{col})")
        self.declared[key] = (name.line, name.col)

    def term(self, node: _Expr) -> _Linear:
        if isinstance(node, _Atom):
            if _NUMBER.match(node.text):
                value = float(node.text)
                if not math.isfinite(value):
                    raise self.err(node, f"number {node.text!r} is not finite")
                return _Linear({}, value)
            m = _VAR.match(node.text)
            if m is None:
                raise self.err(node, f"expected a number or a declared variable, got "
                                     f"{node.text!r}")
            key = (m.group(1), int(m.group(2)))
            if key not in self.declared:
                raise self.err(node, f"{node.text} is not declared")
            return _Linear({key: 1.0}, 0.0)
        if not node.items or not isinstance(node.items[0], _Atom):
            raise self.err(node, "expected an arithmetic expression (+ - * or a variable)")
        op = node.items[0].text
        args = [self.term(a) for a in node.items[1:]]
        if op == "+" and args:
            out = args[0]
            for a in args[1:]:
                out = out.plus(a)
            return out
        if op == "-" and len(args) == 1:
            return args[0].scaled(-1.0)
        if op == "-" and args:
            out = args[0]
            for a in args[1:]:
                out = out.plus(a.scaled(-1.0))
            return out
        if op == "*" and args:
            out = _Linear({}, 1.0)
            for a, src in zip(args, node.items[1:], strict=True):
                if out.coeffs and a.coeffs:
                    raise self.err(src, "a product of two variables is not linear")
                if a.coeffs:
                    out = a.scaled(out.const)
                else:
                    out = out.scaled(a.const)
            return out
        raise self.err(node.items[0], f"unknown arithmetic operator {op!r} "
                                      f"(expected +, -, *)")

    def formula(self, node: _Expr) -> list[list[_Ineq]]:
        """The DNF of a formula: a list of conjunctions of inequalities."""
        if not isinstance(node, _List) or not node.items or not isinstance(node.items[0],
                                                                           _Atom):
            raise self.err(node, "expected a constraint such as (<= X_0 1.0), (and ...) or "
                                 "(or ...)")
        op = node.items[0].text
        args = node.items[1:]
        if op == "and":
            out: list[list[_Ineq]] = [[]]
            for a in args:
                parts = self.formula(a)
                if len(parts) == 1:  # no new disjuncts: extend in place
                    for c in out:
                        c.extend(parts[0])
                    continue
                out = [c + p for c in out for p in parts]
                if len(out) > MAX_DISJUNCTS:
                    raise self.err(node, f"the property has more than {MAX_DISJUNCTS} "
                                         f"disjuncts in normal form")
            return out
        if op == "or":
            if not args:
                raise self.err(node, "(or) needs at least one argument")
            dis: list[list[_Ineq]] = []
            for a in args:
                dis.extend(self.formula(a))
                if len(dis) > MAX_DISJUNCTS:
                    raise self.err(node, f"the property has more than {MAX_DISJUNCTS} "
                                         f"disjuncts in normal form")
            return dis
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.err(node, f"({op} a b) takes two arguments, got {len(args)}")
            left, right = self.term(args[0]), self.term(args[1])
            diff = left.plus(right.scaled(-1.0))  # left - right
            if op in ("<=", "<"):
                return [[_Ineq(diff, op == "<", node.line, node.col)]]
            if op in (">=", ">"):
                return [[_Ineq(diff.scaled(-1.0), op == ">", node.line, node.col)]]
            return [[_Ineq(diff, False, node.line, node.col),
                     _Ineq(diff.scaled(-1.0), False, node.line, node.col)]]
        raise self.err(node.items[0], f"unknown connective or relation {op!r}")


def _dense(declared: dict[tuple[str, int], tuple[int, int]], kind: str, path: str) -> int:
    idx = sorted(i for k, i in declared if k == kind)
    if idx != list(range(len(idx))):
        missing = next(i for i in range(len(idx) + 1) if i not in idx)
        raise VnnlibError(f"{path}: {kind}_0 .. {kind}_{idx[-1]} are not all declared "
                          f"({kind}_{missing} is missing)")
    return len(idx)


def parse_vnnlib(text: str, path: str = "<vnnlib>") -> Property:
    """A property from VNN-LIB text (see the module docstring)."""
    reader = _Reader(text, path)
    parser = _Parser(reader)
    assertions: list[_Expr] = []
    for form in reader.forms():
        if not isinstance(form, _List) or not form.items or not isinstance(form.items[0],
                                                                           _Atom):
            raise reader.error("expected (declare-const ...) or (assert ...)", form.line,
                               form.col)
        head = form.items[0].text
        if head == "declare-const":
            parser.declare(form)
        elif head == "assert":
            if len(form.items) != 2:
                raise reader.error("(assert ...) takes one formula", form.line, form.col)
            assertions.append(form.items[1])
        else:
            raise reader.error(f"unknown command {head!r} (expected declare-const or assert)",
                               form.items[0].line, form.items[0].col)
    dnf: list[list[_Ineq]] = [[]]
    for a in assertions:  # syntax and linearity errors first, with their line:col
        parts = parser.formula(a)
        if len(parts) == 1:  # a plain conjunction (box bounds): extend in place, no copies
            for c in dnf:
                c.extend(parts[0])
            continue
        dnf = [c + p for c in dnf for p in parts]
        if len(dnf) > MAX_DISJUNCTS:
            raise VnnlibError(f"{path}: the property has more than {MAX_DISJUNCTS} disjuncts "
                              f"in normal form")
    n_in = _dense(parser.declared, "X", path)
    n_out = _dense(parser.declared, "Y", path)
    if n_in == 0 or n_out == 0:
        raise VnnlibError(f"{path}: the property declares {n_in} inputs X_i and {n_out} outputs "
                          f"Y_j; it needs both")
    if not assertions:
        raise VnnlibError(f"{path}: the property has no (assert ...)")
    return _split(dnf, n_in, n_out, path)


def _split(dnf: list[list[_Ineq]], n_in: int, n_out: int, path: str) -> Property:
    cases: dict[tuple[bytes, bytes], Case] = {}
    dropped = 0
    for conj in dnf:
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        rows: list[np.ndarray] = []
        rhs: list[float] = []
        strict: list[bool] = []
        false = False
        for ineq in conj:
            xs = {i: c for (k, i), c in ineq.lhs.coeffs.items() if k == "X" and c != 0.0}
            ys = {i: c for (k, i), c in ineq.lhs.coeffs.items() if k == "Y" and c != 0.0}
            where = f"{path}:{ineq.line}:{ineq.col}"
            if xs and ys:
                raise VnnlibError(f"{where}: a constraint mixing inputs and outputs is not "
                                  f"supported")
            if xs:
                if len(xs) > 1:
                    raise VnnlibError(f"{where}: a linear constraint over several inputs is not "
                                      f"supported; inputs must be bounded one by one (a box)")
                (i, c), = xs.items()
                bound = -ineq.lhs.const / c  # c x + k <= 0
                if c > 0:
                    hi[i] = min(hi[i], bound)
                else:
                    lo[i] = max(lo[i], bound)
                # a strict input bound is kept closed: sound for unsat; a witness on the
                # boundary of a strict bound is possible but measure-zero
            elif ys:
                row = np.zeros(n_out)
                for j, c in ys.items():
                    row[j] = c
                rows.append(row)
                rhs.append(-ineq.lhs.const)
                strict.append(ineq.strict)
            else:
                k = ineq.lhs.const
                if (k >= 0) if ineq.strict else (k > 0):
                    false = True
        if false or bool(np.any(lo > hi)):
            dropped += 1
            continue
        for side, limits in (("lower", lo), ("upper", hi)):
            missing = np.flatnonzero(~np.isfinite(limits))
            if missing.size:
                raise VnnlibError(f"{path}: input X_{int(missing[0])} has no {side} bound in "
                                  f"some disjunct; every input needs a finite box")
        key = (lo.tobytes(), hi.tobytes())
        case = cases.setdefault(key, Case(lo, hi))
        a = np.array(rows).reshape(len(rows), n_out)
        case.polytopes.append(Polytope(a, np.array(rhs, dtype=np.float64),
                                       np.array(strict, dtype=bool)))
    return Property(path, n_in, n_out, list(cases.values()), dropped)


def read_vnnlib(path: str | Path) -> Property:
    p = Path(path)
    if not p.is_file():
        raise VnnlibError(f"{p}: no such VNN-LIB file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise VnnlibError(f"{p}: cannot be read as text: {err}") from None
    return parse_vnnlib(text, str(p))


__all__ = ["Case", "Polytope", "Property", "VnnlibError", "parse_vnnlib", "read_vnnlib"]
