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

import bisect
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from absdsl.errors import AbsdslError, InputError

MAX_DISJUNCTS = 100_000  # the DNF of a property larger than this is refused (memory)
_VAR = re.compile(r"^([XY])_(\d+)$")
_NUMBER = re.compile(r"^[+-]?((\d+(\.\d*)?)|(\.\d+))([eE][+-]?\d+)?$")


class VnnlibError(InputError):
    """A property file that cannot be read or does not fit the network (file:line:col)."""


@dataclass(frozen=True)
class _Atom:
    text: str
    pos: int  # character offset (line:col only for messages)


@dataclass
class _List:
    items: list[_Atom | _List]
    pos: int


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

_TOKEN = re.compile(r";[^\n]*|[()]|[^\s();]+")
DEADLINE_EVERY = 20_000  # tokens (and disjuncts) between two looks at the clock


class VnnlibTimeout(AbsdslError):
    """The deadline passed while the property was being read: the answer is ``timeout``."""


class _Reader:
    """S-expressions from one ``re.findall`` pass; a node's ``pos`` is its token index,
    turned into ``line:col`` (by a second, positional pass) only for a message, so a
    30 MB file is read in seconds."""

    def __init__(self, text: str, path: str, deadline: float | None = None) -> None:
        self.text = text
        self.path = path
        self.deadline = deadline
        self._offsets: list[int] | None = None
        self._newlines: list[int] | None = None

    def where(self, pos: int) -> tuple[int, int]:
        """line:col of token ``pos`` (``len(tokens)``: the end of the file)."""
        if self._offsets is None:
            self._offsets = [m.start() for m in _TOKEN.finditer(self.text)]
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        assert self._newlines is not None
        at = self._offsets[pos] if pos < len(self._offsets) else len(self.text)
        line = bisect.bisect_left(self._newlines, at)
        col = at - (self._newlines[line - 1] + 1 if line else 0) + 1
        return line + 1, col

    def error(self, message: str, pos: int) -> VnnlibError:
        line, col = self.where(pos)
        return VnnlibError(f"{self.path}:{line}:{col}: {message}")

    def check_clock(self) -> None:
        if self.deadline is not None and time.perf_counter() > self.deadline:
            raise VnnlibTimeout(f"{self.path}: the deadline passed while reading the property")

    def forms(self) -> list[_Expr]:
        """Every top-level form; an iterative reader (no recursion limit on nesting)."""
        tokens = _TOKEN.findall(self.text)
        self.check_clock()
        out: list[_Expr] = []
        stack: list[tuple[list[_Expr], int]] = []
        for at, tok in enumerate(tokens):
            if at % DEADLINE_EVERY == 0:
                self.check_clock()
            if tok == "(":
                stack.append(([], at))
            elif tok == ")":
                if not stack:
                    raise self.error("unexpected ')'", at)
                items, opened = stack.pop()
                (stack[-1][0] if stack else out).append(_List(items, opened))
            elif tok[0] != ";":
                (stack[-1][0] if stack else out).append(_Atom(tok, at))
        if stack:
            line, col = self.where(stack[-1][1])
            raise self.error(f"unclosed '(' opened at {line}:{col}", len(tokens))
        return out


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
    pos: int


class _Parser:
    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.declared: dict[tuple[str, int], int] = {}  # variable -> token of its name

    def err(self, node: _Expr, message: str) -> VnnlibError:
        return self.r.error(message, pos=node.pos)

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
            line, col = self.r.where(self.declared[key])
            raise self.err(name, f"{name.text} is declared twice (first at {line}:{col})")
        self.declared[key] = name.pos

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

    def _bound_atom(self, op: str, var: _Atom, num: _Atom, pos: int) -> _Ineq | None:
        """(op VAR NUMBER) as an inequality, None when it is not of that shape."""
        m = _VAR.match(var.text)
        if m is None or not _NUMBER.match(num.text):
            return None
        key = (m.group(1), int(m.group(2)))
        value = float(num.text)
        if key not in self.declared or not math.isfinite(value):
            return None  # the general path reports it
        if op in ("<=", "<"):  # x - v <= 0
            return _Ineq(_Linear({key: 1.0}, -value), op == "<", pos)
        return _Ineq(_Linear({key: -1.0}, value), op == ">", pos)

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
        if op in ("<=", ">=", "<", ">") and len(args) == 2 and isinstance(args[0], _Atom) \
                and isinstance(args[1], _Atom):  # the common (<= X_3 0.5): no term objects
            fast = self._bound_atom(op, args[0], args[1], node.pos)
            if fast is not None:
                return [[fast]]
        if op in ("<=", ">=", "<", ">", "="):
            if len(args) != 2:
                raise self.err(node, f"({op} a b) takes two arguments, got {len(args)}")
            left, right = self.term(args[0]), self.term(args[1])
            diff = left.plus(right.scaled(-1.0))  # left - right
            if op in ("<=", "<"):
                return [[_Ineq(diff, op == "<", node.pos)]]
            if op in (">=", ">"):
                return [[_Ineq(diff.scaled(-1.0), op == ">", node.pos)]]
            return [[_Ineq(diff, False, node.pos), _Ineq(diff.scaled(-1.0), False, node.pos)]]
        raise self.err(node.items[0], f"unknown connective or relation {op!r}")


def _dense(declared: dict[tuple[str, int], int], kind: str, path: str) -> int:
    idx = sorted(i for k, i in declared if k == kind)
    if idx != list(range(len(idx))):
        missing = next(i for i in range(len(idx) + 1) if i not in idx)
        raise VnnlibError(f"{path}: {kind}_0 .. {kind}_{idx[-1]} are not all declared "
                          f"({kind}_{missing} is missing)")
    return len(idx)


def parse_vnnlib(text: str, path: str = "<vnnlib>", deadline: float | None = None
                 ) -> Property:
    """A property from VNN-LIB text (see the module docstring).

    ``deadline`` (a ``time.perf_counter()`` value): past it, ``VnnlibTimeout`` is raised.
    """
    reader = _Reader(text, path, deadline)
    parser = _Parser(reader)
    assertions: list[_Expr] = []
    for form in reader.forms():
        if not isinstance(form, _List) or not form.items or not isinstance(form.items[0],
                                                                           _Atom):
            raise reader.error("expected (declare-const ...) or (assert ...)", pos=form.pos)
        head = form.items[0].text
        if head == "declare-const":
            parser.declare(form)
        elif head == "assert":
            if len(form.items) != 2:
                raise reader.error("(assert ...) takes one formula", pos=form.pos)
            assertions.append(form.items[1])
        else:
            raise reader.error(f"unknown command {head!r} (expected declare-const or assert)",
                               pos=form.items[0].pos)
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
    reader.check_clock()
    return _split(dnf, n_in, n_out, path, reader)


def _split(dnf: list[list[_Ineq]], n_in: int, n_out: int, path: str,
           reader: _Reader) -> Property:
    cases: dict[tuple[bytes, bytes], Case] = {}
    dropped = 0
    for index, conj in enumerate(dnf):
        if index % 1000 == 999:
            reader.check_clock()
        lo = np.full(n_in, -np.inf)
        hi = np.full(n_in, np.inf)
        rows: list[np.ndarray] = []
        rhs: list[float] = []
        strict: list[bool] = []
        false = False
        for ineq in conj:
            xs = {i: c for (k, i), c in ineq.lhs.coeffs.items() if k == "X" and c != 0.0}
            ys = {i: c for (k, i), c in ineq.lhs.coeffs.items() if k == "Y" and c != 0.0}
            if xs and ys:
                raise reader.error("a constraint mixing inputs and outputs is not supported",
                                   ineq.pos)
            if xs:
                if len(xs) > 1:
                    raise reader.error("a linear constraint over several inputs is not "
                                       "supported; inputs must be bounded one by one (a box)",
                                       ineq.pos)
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


def read_vnnlib(path: str | Path, deadline: float | None = None) -> Property:
    """The property in file ``path``; ``VnnlibTimeout`` past ``deadline`` (perf_counter)."""
    p = Path(path)
    if not p.is_file():
        raise VnnlibError(f"{p}: no such VNN-LIB file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise VnnlibError(f"{p}: cannot be read as text: {err}") from None
    return parse_vnnlib(text, str(p), deadline)


__all__ = ["Case", "Polytope", "Property", "VnnlibError", "VnnlibTimeout", "parse_vnnlib",
           "read_vnnlib"]
