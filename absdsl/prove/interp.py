"""A small interpreter of DSL rules and expressions over a :class:`Backend`.

It follows the compiler (``compiler/exprs.py``, ``compiler/codegen.py``) statement by
statement, on a state of a few neurons: statements run in order, a guarded statement
evaluates every branch on a copy of the names and merges only the state variables (first
matching guard wins, per neuron), divisions inside guarded branches and relaxations are safe
(a zero denominator becomes 1), ``l`` and ``u`` are the rule's input state's gamma bounds
(the interval hull, ``sum(|G|)``) computed when first read. Generators are columns keyed like
the runtime's blocks: a shared noise symbol per input column, one fresh column per neuron for
``newgens``. The tree is walked; nothing is evaluated as Python.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from absdsl.compiler.exprs import linearize
from absdsl.dsl import ast


@dataclass
class Gens:
    """Generator columns: column id -> {neuron: coefficient}; a missing neuron is zero."""

    cols: dict[str, dict[int, Any]] = field(default_factory=dict)


@dataclass
class V:
    """A value: kind ``num`` (float), ``bound``/``bool`` (one term per neuron), ``gens``,
    ``absgens`` (|G|, only inside sum), ``linop`` ("W" or "|W|")."""

    kind: str
    data: Any


class ProveError(Exception):
    """A construct the interpreter cannot follow (reported as 'not provable here')."""


@dataclass
class Ctx:
    bk: Any
    n: int
    names: dict[str, V]
    kinds: dict[str, str]  # the domain's state fields
    gamma: ast.Gamma | None = None
    lazy: dict[str, Callable[[], V]] = field(default_factory=dict)
    W: list[list[Any]] | None = None
    activation: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, dict[str, V]] = field(default_factory=dict)
    in_guard: bool = False
    sum_mode: tuple[str, Any] = ("abs", None)  # how sum(|G|) is read (see gamma_side)

    def child(self, names: dict[str, V], in_guard: bool) -> Ctx:
        return Ctx(self.bk, self.n, names, self.kinds, self.gamma, self.lazy, self.W,
                   self.activation, self.params, self.inputs, in_guard, self.sum_mode)


# ---- values ------------------------------------------------------------------------------

def lift(v: V, ctx: Ctx) -> list[Any]:
    """A num or bound as one term per neuron."""
    if v.kind == "num":
        c = ctx.bk.const(v.data)
        return [c] * ctx.n
    if v.kind == "bound":
        return list(v.data)
    raise ProveError(f"expected a bound, got {v.kind}")


def _elementwise(fn: Callable[..., Any], vals: list[V], ctx: Ctx) -> V:
    lists = [lift(v, ctx) for v in vals]
    width = max(len(x) for x in lists)
    lists = [x * width if len(x) == 1 else x for x in lists]
    return V("bound", [fn(*args) for args in zip(*lists, strict=True)])


def gens_scale(g: Gens, s: list[Any], bk: Any) -> Gens:
    return Gens({k: {i: bk.mul(c, s[i]) for i, c in col.items()} for k, col in g.cols.items()})


def gens_add(a: Gens, b: Gens, bk: Any, sign: float = 1.0) -> Gens:
    out = {k: dict(col) for k, col in a.cols.items()}
    for k, col in b.cols.items():
        dst = out.setdefault(k, {})
        for i, c in col.items():
            c2 = c if sign > 0 else bk.neg(c)
            dst[i] = bk.add(dst[i], c2) if i in dst else c2
    return Gens(out)


def gens_where(cond: list[Any], a: Gens, b: Gens, bk: Any) -> Gens:
    out: dict[str, dict[int, Any]] = {}
    zero = bk.const(0.0)
    for k in dict.fromkeys(list(a.cols) + list(b.cols)):
        ca, cb = a.cols.get(k, {}), b.cols.get(k, {})
        col = {}
        for i in sorted(set(ca) | set(cb)):
            col[i] = bk.ite(cond[i], ca.get(i, zero), cb.get(i, zero))
        out[k] = col
    return Gens(out)


def abs_sum(g: Gens, n: int, bk: Any) -> list[Any]:
    total = [bk.const(0.0)] * n
    for col in g.cols.values():
        for i, c in col.items():
            total[i] = bk.add(total[i], bk.abs(c))
    return total


def coerce(v: V, kind: str, ctx: Ctx) -> V:
    if v.kind == kind:
        return v
    if v.kind == "num" and kind == "bound":
        return V("bound", lift(v, ctx))
    if v.kind == "num" and kind == "gens" and float(v.data) == 0.0:
        return V("gens", Gens())
    raise ProveError(f"a {v.kind} stored in a {kind} state variable")


# ---- expressions -------------------------------------------------------------------------

def eval_expr(e: ast.Expr, ctx: Ctx) -> V:
    bk = ctx.bk
    if isinstance(e, ast.Num):
        return V("num", float(e.value))
    if isinstance(e, ast.Name):
        if e.ident in ctx.names:
            return ctx.names[e.ident]
        if e.ident == "W" and ctx.W is not None:
            return V("linop", "W")
        if e.ident in ctx.lazy:
            value = ctx.lazy.pop(e.ident)()
            ctx.names[e.ident] = value
            return value
        raise ProveError(f"undefined name '{e.ident}'")
    if isinstance(e, ast.Attr):
        return ctx.inputs[e.base][e.field]
    if isinstance(e, ast.Neg):
        v = eval_expr(e.operand, ctx)
        if v.kind == "num":
            return V("num", -v.data)
        if v.kind == "gens":
            return V("gens", gens_scale(v.data, [bk.const(-1.0)] * ctx.n, bk))
        return V("bound", [bk.neg(t) for t in v.data])
    if isinstance(e, ast.Abs):
        if isinstance(e.operand, ast.Name) and e.operand.ident == "W" and ctx.W is not None:
            return V("linop", "|W|")
        v = eval_expr(e.operand, ctx)
        if v.kind == "num":
            return V("num", abs(v.data))
        if v.kind == "gens":
            return V("absgens", v.data)
        return V("bound", [bk.abs(t) for t in v.data])
    if isinstance(e, ast.BinOp):
        return _binop(e, ctx)
    if isinstance(e, ast.Call):
        return _call(e, ctx)
    if isinstance(e, ast.Compare):
        a, b = eval_expr(e.left, ctx), eval_expr(e.right, ctx)
        return _elementwise_bool(lambda x, y: bk.cmp(e.op, x, y), [a, b], ctx)
    if isinstance(e, ast.BoolOp):
        parts = [eval_expr(o, ctx).data for o in e.operands]
        if e.op == "not":
            return V("bool", [bk.not_(t) for t in parts[0]])
        fn = bk.and_ if e.op == "and" else bk.or_
        return V("bool", [fn(list(ts)) for ts in zip(*parts, strict=True)])
    if isinstance(e, ast.Ternary):
        cond = eval_expr(e.cond, ctx).data
        a, b = eval_expr(e.then, ctx), eval_expr(e.other, ctx)
        if "gens" in (a.kind, b.kind):
            ga = a.data if a.kind == "gens" else Gens()
            gb = b.data if b.kind == "gens" else Gens()
            return V("gens", gens_where(cond, ga, gb, bk))
        la, lb = lift(a, ctx), lift(b, ctx)
        return V("bound", [bk.ite(c, x, y) for c, x, y in zip(cond, la, lb, strict=True)])
    raise ProveError(f"unsupported expression {type(e).__name__}")


def _elementwise_bool(fn: Callable[..., Any], vals: list[V], ctx: Ctx) -> V:
    out = _elementwise(fn, vals, ctx)
    return V("bool", out.data)


def _binop(e: ast.BinOp, ctx: Ctx) -> V:
    bk = ctx.bk
    if e.op == "@":
        return _matmul(e, ctx)
    a, b = eval_expr(e.left, ctx), eval_expr(e.right, ctx)
    if e.op in "+-" and b.kind == "num" and b.data == 0.0 and a.kind in ("bound", "gens"):
        return a
    if a.kind == "num" and b.kind == "num":
        x, y = a.data, b.data
        return V("num", {"+": x + y, "-": x - y, "*": x * y, "/": x / y if y else 0.0}[e.op])
    if "gens" in (a.kind, b.kind):
        if e.op in "+-":
            if a.kind == b.kind:
                return V("gens", gens_add(a.data, b.data, bk, 1.0 if e.op == "+" else -1.0))
            other = b if a.kind == "gens" else a
            if other.kind == "num" and other.data == 0.0:
                if a.kind == "gens":
                    return a
                return b if e.op == "+" else V("gens", gens_scale(
                    b.data, [bk.const(-1.0)] * ctx.n, bk))
            raise ProveError("generators added to a bound")
        if e.op == "*":
            g, s = (a, b) if a.kind == "gens" else (b, a)
            return V("gens", gens_scale(g.data, lift(s, ctx), bk))
        if e.op == "/" and a.kind == "gens":
            inv = [bk.div(bk.const(1.0), t, True) for t in lift(b, ctx)]
            return V("gens", gens_scale(a.data, inv, bk))
        raise ProveError("division by generators")
    if e.op == "+":
        return _elementwise(bk.add, [a, b], ctx)
    if e.op == "-":
        return _elementwise(bk.sub, [a, b], ctx)
    if e.op == "*":
        return _elementwise(bk.mul, [a, b], ctx)
    return _elementwise(lambda x, y: bk.div(x, y, ctx.in_guard), [a, b], ctx)


def _matmul(e: ast.BinOp, ctx: Ctx) -> V:
    bk = ctx.bk
    op = eval_expr(e.left, ctx)
    x = eval_expr(e.right, ctx)
    assert ctx.W is not None and op.kind == "linop"
    W = ctx.W if op.data == "W" else [[bk.abs(w) for w in row] for row in ctx.W]
    if x.kind in ("bound", "num"):
        xs = lift(x, ctx)
        return V("bound", [_dot(row, xs, bk) for row in W])
    if x.kind == "gens":
        cols = {}
        for k, col in x.data.cols.items():
            new = {}
            for i, row in enumerate(W):
                terms = [bk.mul(row[j], c) for j, c in col.items()]
                if terms:
                    acc = terms[0]
                    for t in terms[1:]:
                        acc = bk.add(acc, t)
                    new[i] = acc
            cols[k] = new
        return V("gens", Gens(cols))
    raise ProveError(f"W @ {x.kind}")


def _dot(row: list[Any], xs: list[Any], bk: Any) -> Any:
    acc = bk.mul(row[0], xs[0])
    for w, x in zip(row[1:], xs[1:], strict=True):
        acc = bk.add(acc, bk.mul(w, x))
    return acc


def _call(e: ast.Call, ctx: Ctx) -> V:
    bk = ctx.bk
    name = e.func
    if name == "sum":
        arg = eval_expr(e.args[0], ctx)
        g: Gens = arg.data
        mode, extra = ctx.sum_mode
        if mode == "abs":
            return V("bound", abs_sum(g, ctx.n, bk))
        field_name = _gens_field_of(e.args[0])
        return V("bound", extra(field_name, g))
    if name == "newgens":
        v = eval_expr(e.args[0], ctx)
        vals = lift(v, ctx)
        return V("gens", Gens({f"new:{i}": {i: vals[i]} for i in range(ctx.n)}))
    vals = [eval_expr(a, ctx) for a in e.args]
    if name == "f":
        assert ctx.activation is not None
        op = ctx.activation
        return _elementwise(lambda x: bk.activation(op, x, ctx.params), vals, ctx)
    if name in ("max", "min"):
        if vals[0].kind == "num" and vals[1].kind == "num":
            return V("num", (max if name == "max" else min)(vals[0].data, vals[1].data))
        return _elementwise(bk.max if name == "max" else bk.min, vals, ctx)
    if name == "abs":
        return eval_expr(ast.Abs(e.args[0], e.pos), ctx)
    if name == "relu":
        return _elementwise(lambda x: bk.max(x, bk.const(0.0)), vals, ctx)
    if name in ("sqrt", "exp", "log", "sigmoid", "tanh"):
        return _elementwise(lambda x: bk.func(name, x), vals, ctx)
    if name in ("df", "dmin", "convex", "concave"):
        raise ProveError(f"'{name}' reads the derivative or curvature of f, which the prover "
                         f"knows nothing of (f is any monotone function here); absdsl check "
                         f"tests the rule by sampling")
    if name == "inflection":
        raise ProveError("'inflection' reads where f's curvature changes, which the prover knows "
                         "nothing of; absdsl check tests the rule by sampling")
    if name in ("tangent_above", "tangent_below"):
        raise ProveError(f"'{name}' is a tangent point found by a numeric search on f and f'; "
                         f"that its tangent passes (p, f(p)) follows from the curvature of f, "
                         f"which the prover knows nothing of; absdsl check tests the rule by "
                         f"sampling")
    raise ProveError(f"unknown function '{name}'")


def _gens_field_of(e: ast.Expr) -> str:
    """The state variable inside sum(|G|) (the correlated reading is per variable)."""
    if isinstance(e, ast.Abs) and isinstance(e.operand, ast.Name):
        return e.operand.ident
    raise ProveError("sum(|...|) of a generator expression, not a state variable")


# ---- statements --------------------------------------------------------------------------

def run_block(body: tuple[ast.Stmt, ...], ctx: Ctx) -> None:
    for stmt in body:
        if isinstance(stmt, ast.Assign):
            target = stmt.targets[0]
            v = eval_expr(stmt.value, ctx)
            if target in ctx.kinds:
                v = coerce(v, ctx.kinds[target], ctx)
            ctx.names[target] = v
        else:
            _guarded(stmt, ctx)


def _guarded(stmt: ast.Guarded, ctx: Ctx) -> None:
    bk = ctx.bk
    conds: list[list[Any] | None] = []
    for br in stmt.branches:
        conds.append(None if br.cond is None else eval_expr(br.cond, ctx).data)
    bk.record_guards([c for c in conds if c is not None])
    before = dict(ctx.names)
    results = []
    for br in stmt.branches:
        sub = ctx.child(dict(before), True)
        run_block(br.body, sub)
        results.append(sub.names)
    if stmt.branches[-1].cond is not None:
        results.append(before)
        conds.append(None)
    for k, kind in ctx.kinds.items():
        if not any(r.get(k) is not before.get(k) for r in results):
            continue
        acc = coerce(results[-1][k], kind, ctx)
        for cond, res in zip(reversed(conds[:-1]), reversed(results[:-1]), strict=True):
            assert cond is not None
            val = coerce(res[k], kind, ctx)
            if kind == "gens":
                acc = V("gens", gens_where(cond, val.data, acc.data, bk))
            else:
                acc = V("bound", [bk.ite(c, x, y) for c, x, y in
                                  zip(cond, val.data, acc.data, strict=True)])
        ctx.names[k] = acc


def gamma_side(ctx: Ctx, side: str) -> list[Any]:
    """The lower or upper gamma expression on the current names (with ``ctx.sum_mode``)."""
    assert ctx.gamma is not None
    expr = ctx.gamma.lower if side == "lower" else ctx.gamma.upper
    sub = ctx.child(dict(ctx.names), False)
    sub.lazy = {}
    return lift(eval_expr(expr, sub), sub)


def relax_lines(case: ast.RelaxCase, relax: ast.Relax, ctx: Ctx, x: Any
                ) -> tuple[Any, Any]:
    """The case's lower and upper lines at x, as programs build them: slope * x + offset
    (``linearize``), every division safe."""
    out = []
    for line in (case.lower, case.upper):
        slope, offset = linearize(line, relax.var, None, relax.filename, relax.source)
        a = lift(eval_expr(slope, ctx), ctx)[0]
        b = lift(eval_expr(offset, ctx), ctx)[0]
        out.append(ctx.bk.add(ctx.bk.mul(a, x), b))
    return out[0], out[1]
