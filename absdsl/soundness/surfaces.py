"""Guard surfaces of a domain, read from its parsed AST: where its rules switch cases."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from absdsl.dsl import ast


@dataclass(frozen=True)
class Surface:
    """``a * l + b * u + c = 0`` in the bounds ``l, u`` a rule reads; ``where`` names it."""

    a: float
    b: float
    c: float
    where: str = "built in"

    def value(self, l: float, u: float) -> float:
        return self.a * l + self.b * u + self.c


BASE_SURFACES = (Surface(1, 0, 0, "l = 0"), Surface(0, 1, 0, "u = 0"),
                 Surface(1, 1, 0, "u = -l"))

_Form = dict[str, float] | None  # a linear form over {"l", "u", "1"}; None: not linear


def _form_add(x: _Form, y: _Form, s: float = 1.0) -> _Form:
    if x is None or y is None:
        return None
    out = dict(x)
    for k, v in y.items():
        out[k] = out.get(k, 0.0) + s * v
    return out


def _form_scale(x: _Form, s: float) -> _Form:
    return None if x is None else {k: v * s for k, v in x.items()}


def _const(x: _Form) -> float | None:
    if x is None or any(v != 0 for k, v in x.items() if k != "1"):
        return None
    return x.get("1", 0.0)


class _SurfaceFinder:
    """Walks rules and relaxations, evaluating expressions as linear forms in l and u, and
    records the surface of every comparison, max/min, relu and |.| it meets."""

    def __init__(self) -> None:
        self.found: list[Surface] = []

    def note(self, form: _Form, where: str) -> None:
        if form is None:
            return
        a, b, c = form.get("l", 0.0), form.get("u", 0.0), form.get("1", 0.0)
        if (a, b) == (0.0, 0.0) or not all(math.isfinite(v) for v in (a, b, c)):
            return
        scale = max(abs(a), abs(b))
        self.found.append(Surface(a / scale, b / scale, c / scale, where))

    def expr(self, e: Any, env: dict[str, _Form], where: str) -> _Form:
        if isinstance(e, ast.Num):
            return {"1": e.value}
        if isinstance(e, ast.Name):
            return env.get(e.ident)
        if isinstance(e, ast.Neg):
            return _form_scale(self.expr(e.operand, env, where), -1.0)
        if isinstance(e, ast.BinOp):
            x, y = self.expr(e.left, env, where), self.expr(e.right, env, where)
            if e.op in "+-":
                return _form_add(x, y, 1.0 if e.op == "+" else -1.0)
            if e.op == "*":
                cx, cy = _const(x), _const(y)
                return _form_scale(y, cx) if cx is not None else (
                    _form_scale(x, cy) if cy is not None else None)
            if e.op == "/":
                cy = _const(y)
                return _form_scale(x, 1.0 / cy) if cy not in (None, 0.0) else None
            return None
        if isinstance(e, ast.Compare):
            x, y = self.expr(e.left, env, where), self.expr(e.right, env, where)
            self.note(_form_add(x, y, -1.0), f"{where}: comparison at {e.pos.line}:{e.pos.column}")
            return None
        if isinstance(e, ast.BoolOp):
            for o in e.operands:
                self.expr(o, env, where)
            return None
        if isinstance(e, ast.Ternary):
            self.expr(e.cond, env, where)
            self.expr(e.then, env, where)
            self.expr(e.other, env, where)
            return None
        if isinstance(e, ast.Abs):
            self.note(self.expr(e.operand, env, where), f"{where}: |.| at {e.pos.line}")
            return None
        if isinstance(e, ast.Call):
            args = [self.expr(a, env, where) for a in e.args]
            if e.func in ("max", "min") and len(args) == 2:
                self.note(_form_add(args[0], args[1], -1.0), f"{where}: {e.func} at {e.pos.line}")
            elif e.func in ("relu", "abs") and args:
                self.note(args[0], f"{where}: {e.func} at {e.pos.line}")
            return None
        return None

    def stmts(self, body: tuple, env: dict[str, _Form], where: str) -> None:
        for s in body:
            if isinstance(s, ast.Assign):
                form = self.expr(s.value, env, where)
                for t in s.targets:
                    env[t] = form if len(s.targets) == 1 else None
            elif isinstance(s, ast.Guarded):
                for br in s.branches:
                    if br.cond is not None:
                        self.expr(br.cond, env, where)
                    self.stmts(br.body, dict(env), where)


def guard_surfaces(loaded: Any) -> list[Surface]:
    """Every surface a rule or relaxation of the domain switches on (plus l = 0, u = 0 and
    u = -l), in terms of the bounds the rule reads."""
    finder = _SurfaceFinder()
    domains = [loaded.domain] + ([loaded.intermediate] if loaded.intermediate else [])
    for dom in domains:
        for rule in dom.rules:
            env: dict[str, _Form] = {"l": {"l": 1.0}, "u": {"u": 1.0}}
            finder.stmts(rule.body, env, f"rule {', '.join(rule.ops)} ({dom.filename}:"
                                         f"{rule.pos.line})")
    for relax in loaded.relaxes:
        env = {relax.lower_name: {"l": 1.0}, relax.upper_name: {"u": 1.0}}
        where = f"relax {', '.join(relax.ops)} ({relax.filename}:{relax.pos.line})"
        for param in relax.params:  # an initial value's guards (DeepPoly's slope: u = -l)
            finder.expr(param.init, env, where)
        for case in relax.cases:
            if case.cond is not None:
                finder.expr(case.cond, env, where)
            finder.expr(case.lower, env, where)
            finder.expr(case.upper, env, where)
    out = list(BASE_SURFACES)
    for s in finder.found:
        if not any(abs(s.a - o.a) + abs(s.b - o.b) + abs(s.c - o.c) < 1e-15 for o in out):
            out.append(s)
    return out
