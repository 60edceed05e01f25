"""Typed compilation of DSL expressions to torch code strings.

Kinds: ``num`` (a Python number), ``bound`` (a tensor [B, *shape]), ``gens`` (a
:class:`runtime.Gens`), ``bool`` (a mask), ``linop`` (W or |W|, only left of ``@``) and
``absgens`` (|G|, only inside ``sum``). Type errors are :class:`DSLError` at file:line:col;
the same pass is the checker, run on every rule at load time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..dsl import ast
from ..errors import DSLError
from . import ops

Value = tuple[str, str]  # (code, kind)

# functions of the rule's activation, with their number of arguments: its derivative, a lower
# bound of f' on [l, u], its curvature on [l, u], and tangent points (``tangent_above(p, a, b)``:
# a point d between a and b, as near a as a search finds, whose tangent passes above
# (p, f(p)); b must be one, and f concave between a and b; ``tangent_below``: below, convex)
# and, for ops with several, the inflection point of f nearest a point
OP_FUNCS = {"df": 1, "dmin": 2, "convex": 2, "concave": 2, "tangent_above": 3,
            "tangent_below": 3, "inflection": 1}

UNARY_TENSOR_FUNCS = {"relu": "torch.relu", "sqrt": "torch.sqrt", "exp": "torch.exp",
                      "log": "torch.log", "sigmoid": "torch.sigmoid", "tanh": "torch.tanh"}


@dataclass
class Scope:
    """What a rule body can see, and where generated lines go."""

    domain: ast.Domain
    names: dict[str, Value]
    emit: Callable[[str], None]
    fresh: Callable[[str], str]
    ref: str  # a tensor in scope, to give numbers a dtype/device/shape
    linop: object | None = None  # the linear map of an affine rule
    linop_code: Callable[..., str] | None = None  # (x, absolute, with_bias=False) -> code
    gens_map: Callable[[str, bool], str] | None = None
    activation: Callable[[str], str] | None = None
    inputs: dict[str, dict[str, Value]] = field(default_factory=dict)
    lazy: dict[str, Callable[[], Value]] = field(default_factory=dict)
    newgens_key: str = "g"
    in_guard: bool = False
    memo: dict[str, str] = field(default_factory=dict)
    op_info: tuple | None = None  # (ops.Op, params) of an activation: df, dmin, convex, ...

    def error(self, message: str, pos: ast.Pos) -> DSLError:
        return DSLError(message, self.domain.source, self.domain.filename, pos.line, pos.column)

    def tmp(self, code: str, stem: str = "t") -> str:
        """Bind code to a fresh variable (shared by identical code: common subexpressions)."""
        if code in self.memo:
            return self.memo[code]
        var = self.fresh(stem)
        self.emit(f"{var} = {code}")
        self.memo[code] = var
        return var


def num(v: float) -> str:
    return repr(float(v))


def as_tensor(value: Value, scope: Scope) -> str:
    code, kind = value
    if kind == "num":
        return f"rt.full_like(value={code}, like={scope.ref})"
    return code


def compile_expr(e: ast.Expr, s: Scope) -> Value:
    if isinstance(e, ast.Num):
        return num(e.value), "num"
    if isinstance(e, ast.Name):
        if e.ident in s.names:
            return s.names[e.ident]
        if e.ident == "W" and s.linop is not None:
            return "W", "linop"
        if e.ident in s.lazy:
            value = s.lazy.pop(e.ident)()
            s.names[e.ident] = value
            return value
        if e.ident in ("W", "b") and s.linop is None:
            raise s.error(f"'{e.ident}' (the weights of a linear map) exists only in the affine "
                          f"rule", e.pos)
        if e.ident in ("lo", "hi"):
            raise s.error(f"'{e.ident}' (the input box) exists only in the input rule", e.pos)
        raise s.error(f"undefined name '{e.ident}'", e.pos)
    if isinstance(e, ast.Attr):
        if e.base not in s.inputs:
            raise s.error(f"'{e.base}' is not an input of this rule (declare it: rule add(p, q))",
                          e.pos)
        if e.field not in s.inputs[e.base]:
            raise s.error(f"input '{e.base}' has no state variable '{e.field}'", e.pos)
        return s.inputs[e.base][e.field]
    if isinstance(e, ast.Neg):
        code, kind = compile_expr(e.operand, s)
        if kind in ("linop", "absgens", "bool"):
            raise s.error(f"cannot negate a value of kind {kind}", e.pos)
        if kind == "num":
            return num(-float(code)), "num"
        return f"(-{code})", kind
    if isinstance(e, ast.Abs):
        if isinstance(e.operand, ast.Name) and e.operand.ident == "W" and s.linop is not None:
            return "|W|", "linop"
        code, kind = compile_expr(e.operand, s)
        if kind == "num":
            return num(abs(float(code))), "num"
        if kind == "bound":
            return f"{code}.abs()", "bound"
        if kind == "gens":
            return code, "absgens"
        raise s.error(f"|...| of a value of kind {kind}", e.pos)
    if isinstance(e, ast.BinOp):
        return _binop(e, s)
    if isinstance(e, ast.Call):
        return _call(e, s)
    if isinstance(e, ast.Compare):
        (a, ka), (b, kb) = compile_expr(e.left, s), compile_expr(e.right, s)
        for k in (ka, kb):
            if k not in ("num", "bound"):
                raise s.error(f"cannot compare a value of kind {k} (only bounds and numbers)",
                              e.pos)
        if ka == "num" and kb == "num":
            raise s.error("comparison of two numbers is constant", e.pos)
        return f"({a} {e.op} {b})", "bool"
    if isinstance(e, ast.BoolOp):
        parts = [compile_expr(o, s) for o in e.operands]
        for (_, k) in parts:
            if k != "bool":
                raise s.error(f"'{e.op}' needs conditions, got a value of kind {k}", e.pos)
        if e.op == "not":
            return f"(~{parts[0][0]})", "bool"
        sym = " & " if e.op == "and" else " | "
        return "(" + sym.join(p for p, _ in parts) + ")", "bool"
    if isinstance(e, ast.Ternary):
        cond, kc = compile_expr(e.cond, s)
        if kc != "bool":
            raise s.error("the condition of '?:' must be a comparison", e.pos)
        then, other = compile_expr(e.then, s), compile_expr(e.other, s)
        kinds = {then[1], other[1]}
        if kinds <= {"num", "bound"}:
            return s.tmp(f"torch.where({cond}, {as_tensor(then, s)}, {other[0]})"), "bound"
        if kinds <= {"num", "gens"}:
            return s.tmp(f"rt.where(mask={cond}, a={then[0]}, b={other[0]})"), "gens"
        raise s.error(f"the branches of '?:' have kinds {then[1]} and {other[1]}", e.pos)
    raise s.error(f"unsupported expression {type(e).__name__}", getattr(e, "pos", ast.Pos(0, 0)))


def _binop(e: ast.BinOp, s: Scope) -> Value:
    if e.op == "@":
        return _matmul(e, s)
    if _is_affine_with_bias(e, s):
        assert isinstance(e.left, ast.BinOp) and s.linop_code is not None
        x, _ = compile_expr(e.left.right, s)
        return s.tmp(s.linop_code(x, False, True), "m"), "bound"
    a, ka = compile_expr(e.left, s)
    b, kb = compile_expr(e.right, s)
    if e.op in "+-" and kb == "num" and float(b) == 0.0 and ka in ("bound", "gens"):
        return a, ka  # x + 0 (a spec's zero bias, a missing bias): no pass over x
    for k in (ka, kb):
        if k in ("linop", "absgens", "bool"):
            what = {"linop": "a linear map outside 'W @ x'",
                    "absgens": "|G| of generators outside sum(|G|)",
                    "bool": "a condition"}[k]
            raise s.error(f"'{e.op}' cannot take {what}", e.pos)
    if ka == "num" and kb == "num":
        fa, fb = float(a), float(b)
        if e.op == "/" and fb == 0.0:
            raise s.error("division by zero", e.pos)
        val = {"+": fa + fb, "-": fa - fb, "*": fa * fb, "/": fa / fb if fb else 0.0}[e.op]
        return num(val), "num"
    if e.op in "+-":
        if "gens" in (ka, kb):
            if ka == kb:
                return f"({a} {e.op} {b})", "gens"
            other = b if ka == "gens" else a
            if other in ("0.0", "-0.0"):
                return (a, ka) if ka == "gens" else ((b, kb) if e.op == "+" else (f"(-{b})", kb))
            raise s.error(f"'{e.op}' of generators and a {kb if ka == 'gens' else ka}: a "
                          f"generator set can only be added to generators", e.pos)
        return f"({a} {e.op} {b})", "bound"
    if e.op == "*":
        if ka == "gens" and kb == "gens":
            raise s.error("product of two generator sets is not linear in the error terms",
                          e.pos)
        if "gens" in (ka, kb):
            g, f = (a, b) if ka == "gens" else (b, a)
            return f"{g}.scale({f})", "gens"
        return f"({a} * {b})", "bound"
    # division
    if kb == "gens":
        raise s.error("division by generators is not linear in the error terms", e.pos)
    if ka == "gens":
        return f"{a}.scale(rt.safe_div(a=1.0, b={b}))", "gens"
    if s.in_guard:
        return f"rt.safe_div(a={a}, b={b})", "bound"
    return f"({a} / {b})", "bound"


def _is_affine_with_bias(e: ast.BinOp, s: Scope) -> bool:
    """``W @ x + b`` with x a bound and b the map's own bias: one call computes both."""
    if not (e.op == "+" and isinstance(e.left, ast.BinOp) and e.left.op == "@"
            and isinstance(e.left.left, ast.Name) and e.left.left.ident == "W"
            and isinstance(e.right, ast.Name) and e.right.ident == "b"):
        return False
    bias = getattr(s.linop, "bias", None)
    if bias is None or s.names.get("b") != (bias, "bound") or "W" in s.names:
        return False
    return compile_expr(e.left.right, s)[1] == "bound"


def _matmul(e: ast.BinOp, s: Scope) -> Value:
    left, kl = compile_expr(e.left, s)
    if kl != "linop":
        raise s.error("the left side of '@' must be W or |W| (the affine rule's linear map)",
                      e.pos)
    x, kx = compile_expr(e.right, s)
    absolute = left == "|W|"
    assert s.linop_code is not None and s.gens_map is not None
    if kx == "bound":
        return s.tmp(s.linop_code(x, absolute), "m"), "bound"
    if kx == "gens":
        if absolute:
            raise s.error("|W| @ G: generators go through W itself (|W| is for radii)", e.pos)
        return s.tmp(s.gens_map(x, absolute), "G"), "gens"
    raise s.error(f"W @ x needs a bound or generators on the right, got {kx}", e.pos)


def _call(e: ast.Call, s: Scope) -> Value:
    name, args = e.func, e.args
    if name == "sum":
        if len(args) != 1:
            raise s.error("sum takes one argument: sum(|G|)", e.pos)
        code, kind = compile_expr(args[0], s)
        if kind != "absgens":
            raise s.error("sum(...) takes |G| for generators G", e.pos)
        return s.tmp(f"{code}.abs_sum()", "r"), "bound"
    if name == "newgens":
        if len(args) != 1:
            raise s.error("newgens takes one argument", e.pos)
        code, kind = compile_expr(args[0], s)
        if kind not in ("bound", "num"):
            raise s.error("newgens(e) needs a bound (one fresh generator per neuron)", e.pos)
        return (f"rt.Gens.fresh(key={s.newgens_key!r}, diag={as_tensor((code, kind), s)})",
                "gens")
    values = [compile_expr(a, s) for a in args]
    for (_, k) in values:
        if k not in ("num", "bound"):
            raise s.error(f"{name}(...) takes bounds and numbers, got a value of kind {k}"
                          + (" (non-linear use of generators)" if k in ("gens", "absgens")
                             else ""), e.pos)
    if name == "f":
        if s.activation is None:
            raise s.error("f (the activation itself) exists only in activation rules and "
                          "relaxations", e.pos)
        if len(values) != 1:
            raise s.error("f takes one argument", e.pos)
        return s.tmp(s.activation(as_tensor(values[0], s)), "f"), "bound"
    if name in OP_FUNCS:
        return _op_call(e, s, values)
    if name in ("max", "min"):
        if len(values) != 2:
            raise s.error(f"{name} takes two arguments", e.pos)
        (a, ka), (b, kb) = values
        if ka == "num" and kb == "num":
            return num((max if name == "max" else min)(float(a), float(b))), "num"
        if kb == "num" or ka == "num":
            t, c = (a, b) if kb == "num" else (b, a)
            return f"torch.clamp({t}, {'min' if name == 'max' else 'max'}={c})", "bound"
        return f"torch.{'maximum' if name == 'max' else 'minimum'}({a}, {b})", "bound"
    if name == "abs":
        if len(values) != 1:
            raise s.error("abs takes one argument", e.pos)
        return compile_expr(ast.Abs(args[0], e.pos), s)
    if name in UNARY_TENSOR_FUNCS:
        if len(values) != 1:
            raise s.error(f"{name} takes one argument", e.pos)
        return f"{UNARY_TENSOR_FUNCS[name]}({as_tensor(values[0], s)})", "bound"
    raise s.error(f"unknown function '{name}' (known: sum, newgens, f, {', '.join(OP_FUNCS)}, "
                  f"max, min, abs, {', '.join(UNARY_TENSOR_FUNCS)})", e.pos)


def _op_call(e: ast.Call, s: Scope, values: list[Value]) -> Value:
    """The activation's derivative ``df(e)``, a lower bound ``dmin(l, u)`` of f' on [l, u],
    the masks ``convex(l, u)`` / ``concave(l, u)`` (f convex / concave on [l, u]) and the
    tangent points ``tangent_above(p, a, b)`` / ``tangent_below(p, a, b)`` and the nearest
    inflection point ``inflection(e)``."""
    if s.op_info is None:
        raise s.error(f"{e.func} exists only in activation rules and relaxations", e.pos)
    op, params = s.op_info
    want = OP_FUNCS[e.func]
    if len(values) != want:
        raise s.error(f"{e.func} takes {want} argument{'s' if want > 1 else ''}", e.pos)
    args = [as_tensor(v, s) for v in values]
    if e.func == "df":
        return s.tmp(op.deriv(args[0], params), "df"), "bound"
    if e.func == "inflection":
        if op.inflection is None:
            raise s.error(f"inflection: op {op.name} lists no inflection points (only periodic "
                          f"ops do: sin, cos)", e.pos)
        return s.tmp(op.inflection(args[0], params), "c"), "bound"
    if e.func in ("tangent_above", "tangent_below"):
        assert s.activation is not None
        p, tight, safe = args
        return s.tmp(f"rt.tangent_point(f=lambda t: {s.activation('t')}, "
                     f"df=lambda t: {op.deriv('t', params)}, p={p}, tight={tight}, "
                     f"safe={safe}, above={e.func == 'tangent_above'})", "tp"), "bound"
    if e.func == "dmin":
        return s.tmp(ops.slope_min_code(op, params, *args), "dmin"), "bound"
    intervals = (op.convex if e.func == "convex" else op.concave)(params)
    return s.tmp(ops.interval_test(intervals, *args), e.func), "bool"


def mentions(e: ast.Expr, names: set[str]) -> bool:
    """Whether expression e reads any of ``names``."""
    if isinstance(e, ast.Name):
        return e.ident in names
    for child in _children(e):
        if mentions(child, names):
            return True
    return False


def _children(e: ast.Expr) -> list[ast.Expr]:
    if isinstance(e, (ast.Neg, ast.Abs)):
        return [e.operand]
    if isinstance(e, (ast.BinOp, ast.Compare)):
        return [e.left, e.right]
    if isinstance(e, ast.BoolOp):
        return list(e.operands)
    if isinstance(e, ast.Ternary):
        return [e.cond, e.then, e.other]
    if isinstance(e, ast.Call):
        return list(e.args)
    return []


def linearize(e: ast.Expr, var: str, src: ast.Domain | None, filename: str, source: str
              ) -> tuple[ast.Expr, ast.Expr]:
    """(slope, intercept) of an expression affine in ``var``, as expressions free of it."""
    zero, one = ast.Num(0.0, e_pos(e)), ast.Num(1.0, e_pos(e))

    def err(msg: str, node: ast.Expr) -> DSLError:
        p = e_pos(node)
        return DSLError(msg, source, filename, p.line, p.column)

    def go(n: ast.Expr) -> tuple[ast.Expr, ast.Expr]:
        if not mentions(n, {var}):
            return zero, n
        if isinstance(n, ast.Name):
            return one, zero
        if isinstance(n, ast.Neg):
            a, c = go(n.operand)
            return ast.Neg(a, n.pos), ast.Neg(c, n.pos)
        if isinstance(n, ast.BinOp) and n.op in "+-":
            (a1, c1), (a2, c2) = go(n.left), go(n.right)
            return ast.BinOp(n.op, a1, a2, n.pos), ast.BinOp(n.op, c1, c2, n.pos)
        if isinstance(n, ast.BinOp) and n.op == "*":
            if mentions(n.left, {var}) and mentions(n.right, {var}):
                raise err(f"a relaxation line must be linear in {var}; this product is not", n)
            k, other = (n.left, n.right) if not mentions(n.left, {var}) else (n.right, n.left)
            a, c = go(other)
            return ast.BinOp("*", k, a, n.pos), ast.BinOp("*", k, c, n.pos)
        if isinstance(n, ast.BinOp) and n.op == "/":
            if mentions(n.right, {var}):
                raise err(f"a relaxation line must be linear in {var}; dividing by it is not", n)
            a, c = go(n.left)
            return ast.BinOp("/", a, n.right, n.pos), ast.BinOp("/", c, n.right, n.pos)
        if isinstance(n, ast.Ternary):
            if mentions(n.cond, {var}):
                raise err(f"a relaxation's condition cannot depend on {var}", n)
            (a1, c1), (a2, c2) = go(n.then), go(n.other)
            return ast.Ternary(n.cond, a1, a2, n.pos), ast.Ternary(n.cond, c1, c2, n.pos)
        raise err(f"a relaxation line must be linear in {var}", n)

    return go(e)


def e_pos(e: ast.Expr) -> ast.Pos:
    return getattr(e, "pos", ast.Pos(0, 0))
