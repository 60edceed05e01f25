"""The domain language's syntax tree: plain dataclasses, each carrying its source position."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    """Where a construct starts in its file (1-based line and column)."""

    line: int
    column: int


# ---- expressions -------------------------------------------------------------------------

@dataclass(frozen=True)
class Num:
    value: float
    pos: Pos


@dataclass(frozen=True)
class Name:
    ident: str
    pos: Pos


@dataclass(frozen=True)
class Attr:
    """``p.l``: state variable ``l`` of input ``p`` in a multi-input rule (``add``)."""

    base: str
    field: str
    pos: Pos


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Abs:
    operand: Expr
    pos: Pos


@dataclass(frozen=True)
class Neg:
    operand: Expr
    pos: Pos


@dataclass(frozen=True)
class BinOp:
    op: str  # + - * / @
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class Compare:
    op: str  # <= >= < > == !=
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class BoolOp:
    op: str  # and, or, not
    operands: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Ternary:
    cond: Expr
    then: Expr
    other: Expr
    pos: Pos


Expr = Num | Name | Attr | Call | Abs | Neg | BinOp | Compare | BoolOp | Ternary


# ---- statements --------------------------------------------------------------------------

@dataclass(frozen=True)
class Assign:
    targets: tuple[str, ...]
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Branch:
    cond: Expr | None  # None: the else branch
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass(frozen=True)
class Guarded:
    """``when c1 {..} when c2 {..} else {..}``: first matching guard wins, per neuron."""

    branches: tuple[Branch, ...]
    pos: Pos


Stmt = Assign | Guarded


# ---- top level ---------------------------------------------------------------------------

@dataclass(frozen=True)
class RelaxCase:
    cond: Expr | None  # None: the else case
    lower: Expr
    upper: Expr
    pos: Pos


@dataclass(frozen=True)
class RelaxParam:
    """``param alpha in [lo, hi] = init``: a per-neuron parameter of a relaxation's lines.
    Every value in [lo, hi] must give sound lines (what ``absdsl prove`` proves and ``absdsl
    check`` samples); ``init`` (it may read l and u) is the value a plain call uses."""

    name: str
    lo: float
    hi: float
    init: Expr
    pos: Pos


@dataclass(frozen=True)
class Relax:
    """Per-neuron lower and upper lines of activations ``ops`` on [l, u], linear in ``x``;
    for a two-input op (``var2`` set, e.g. ``relax mul(x, y; lx, ux, ly, uy)``) planes in
    ``x`` and ``var2`` on the box [l, u] x [lower2, upper2]."""

    ops: tuple[str, ...]
    var: str
    lower_name: str
    upper_name: str
    cases: tuple[RelaxCase, ...]
    pos: Pos
    filename: str = "<domain>"
    source: str = ""
    var2: str = ""
    lower2: str = ""
    upper2: str = ""
    params: tuple[RelaxParam, ...] = ()

    @property
    def arity(self) -> int:
        return 2 if self.var2 else 1


@dataclass(frozen=True)
class StateField:
    name: str
    kind: str  # bound | gens
    pos: Pos


@dataclass(frozen=True)
class Gamma:
    """Concretisation: ``lower <= x <= upper``; also the soundness oracle of property tests."""

    lower: Expr
    upper: Expr
    pos: Pos


@dataclass(frozen=True)
class Rule:
    ops: tuple[str, ...]
    params: tuple[str, ...]
    continuous: bool
    body: tuple[Stmt, ...]
    pos: Pos


@dataclass
class Domain:
    name: str
    pos: Pos
    state: list[StateField] = field(default_factory=list)
    gamma: Gamma | None = None
    rules: list[Rule] = field(default_factory=list)
    bounds_source: tuple[str, Pos] | None = None  # "backsub" or a forward domain's name
    output_source: tuple[str, Pos] | None = None  # "backsub" or None (forward)
    filename: str = "<domain>"
    source: str = ""

    @property
    def is_linear(self) -> bool:
        """A back-substitution domain (DeepPoly-like) rather than a forward one (Box-like)."""
        return self.output_source is not None and self.output_source[0] == "backsub"

    def rule_for(self, op: str) -> Rule | None:
        """The rule for ``op``; a rule named ``monotone`` covers every monotone activation."""
        for rule in self.rules:
            if op in rule.ops:
                return rule
        return None


@dataclass
class Module:
    """One parsed file, with its imports resolved into ``relaxes`` and ``domains``."""

    filename: str
    source: str
    imports: list[tuple[str, Pos]] = field(default_factory=list)
    relaxes: list[Relax] = field(default_factory=list)
    domains: list[Domain] = field(default_factory=list)
