"""Proof obligations of a domain file and the solver loop (see :mod:`absdsl.prove`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from absdsl.compiler.codegen import find_rule, relax_for
from absdsl.compiler.domain_check import covered_ops
from absdsl.dsl import ast
from absdsl.dsl.loader import load_domain
from absdsl.dsl.parser import load_module
from absdsl.errors import AbsdslError, DSLError
from absdsl.prove.interp import eval_expr

from .backends import NumpyBackend, Z3Backend, model_value
from .interp import Ctx, Gens, ProveError, V, coerce, gamma_side, relax_lines, run_block

ACTIVATIONS = ("relu", "leaky_relu", "hardtanh", "sigmoid", "tanh")
N_GENS = 2           # shared generators of a symbolic input state
N_SAMPLES = 100_000  # points of the numeric test of a rule the solver cannot decide
DEFAULT_TIMEOUT_S = 20.0

Goal = tuple[str, Any, Any]  # (what, lhs, rhs): the claim lhs <= rhs


class SolverMissing(AbsdslError):
    """z3 is not installed."""


def solver_available() -> bool:
    try:
        # lazy: optional dependency z3
        import z3  # noqa: F401
    except ImportError:
        return False
    return True


def require_solver() -> None:
    if not solver_available():
        raise SolverMissing("absdsl prove needs the z3 SMT solver: pip install z3-solver "
                            "(or pip install 'absdsl[prove]')")


# ---- variables: symbolic or sampled ------------------------------------------------------

class Z3Vars:
    """Universally quantified variables of an obligation, with their constraints."""

    def __init__(self, bk: Z3Backend) -> None:
        self.bk = bk
        self.vars: dict[str, Any] = {}
        self.assumptions: list[Any] = []

    def real(self, name: str) -> Any:
        v = self.vars[name] = self.bk.var(name)
        return v

    def range(self, name: str, lo: float, hi: float) -> Any:
        v = self.real(name)
        self.assumptions += [v >= self.bk.const(lo), v <= self.bk.const(hi)]
        return v

    def noise(self, name: str) -> Any:
        return self.range(name, -1.0, 1.0)

    def between(self, name: str, lo: Any, hi: Any) -> Any:
        v = self.real(name)
        self.assumptions += [lo <= v, v <= hi]
        return v

    def assume(self, cond: Any) -> None:
        self.assumptions.append(cond)


_SPECIAL = np.array([0.0, 1e-6, -1e-6, 1e-3, -1e-3, 0.1, -0.1, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0,
                     10.0, -10.0, 1e3, -1e3])


class NumpyVars:
    """The same variables as sample arrays: special values (0, +-1, tiny, huge) and random
    ones of every scale; ``fixed`` pins them (to re-check a solver's counterexample)."""

    def __init__(self, n: int, seed: int = 0, fixed: dict[str, float] | None = None) -> None:
        self.n = n
        self.rng = np.random.default_rng(seed)
        self.fixed = fixed
        self.vars: dict[str, Any] = {}
        self.mask: Any = np.ones(n, dtype=bool)

    def _draw(self, special: np.ndarray, lo: float, hi: float) -> np.ndarray:
        pick = self.rng.random(self.n) < 0.4
        uni = lo + (hi - lo) * self.rng.random(self.n)
        return np.where(pick, self.rng.choice(special, self.n), uni)

    def real(self, name: str) -> Any:
        if self.fixed is not None:
            v = np.array([self.fixed[name]])
        else:
            mag = 10.0 ** self.rng.uniform(-4, 3, self.n) * self.rng.choice([-1.0, 1.0], self.n)
            pick = self.rng.random(self.n) < 0.4
            v = np.where(pick, self.rng.choice(_SPECIAL, self.n), mag)
        self.vars[name] = v
        return v

    def range(self, name: str, lo: float, hi: float) -> Any:
        if self.fixed is not None:
            v = np.array([self.fixed[name]])
        else:
            v = self._draw(np.array([lo, hi, (lo + hi) / 2]), lo, hi)
        self.vars[name] = v
        self.mask = self.mask & (v >= lo) & (v <= hi)
        return v

    def noise(self, name: str) -> Any:
        return self.range(name, -1.0, 1.0)

    def between(self, name: str, lo: Any, hi: Any) -> Any:
        if self.fixed is not None:
            v = np.array([self.fixed[name]])
        else:
            t = self._draw(np.array([0.0, 1.0, 0.5]), 0.0, 1.0)
            with np.errstate(all="ignore"):
                v = np.where(t == 1.0, hi, lo + t * (hi - lo))
        self.vars[name] = v
        with np.errstate(invalid="ignore"):
            self.mask = self.mask & (lo <= v) & (v <= hi)
        return v

    def assume(self, cond: Any) -> None:
        self.mask = self.mask & cond


# ---- obligations -------------------------------------------------------------------------

@dataclass
class Obligation:
    """One rule (or one relaxation case) to prove: ``build`` returns its goals."""

    name: str
    where: str
    build: Callable[[Any, Any], list[Goal]]
    note: str = ""


@dataclass
class ProofResult:
    name: str
    where: str
    status: str  # proved | refuted | not provable here
    detail: str = ""
    counterexample: dict[str, float] | None = None
    seconds: float = 0.0

    def format(self) -> str:
        text = f"{self.name} ({self.where}): {self.status}"
        if self.detail:
            text += f" -- {self.detail}"
        if self.counterexample:
            text += "\n      counterexample: " + ", ".join(
                f"{k} = {v:.6g}" for k, v in self.counterexample.items())
        return text


@dataclass
class ProofReport:
    file: str
    results: list[ProofResult] = field(default_factory=list)

    @property
    def refuted(self) -> list[ProofResult]:
        return [r for r in self.results if r.status == "refuted"]

    @property
    def ok(self) -> bool:
        return not self.refuted

    def format(self) -> str:
        lines = [f"proofs of {self.file} (z3, over the reals):"]
        lines += ["  " + r.format() for r in self.results]
        counts = {s: sum(1 for r in self.results if r.status == s)
                  for s in ("proved", "refuted", "not provable here")}
        lines.append("  " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        return "\n".join(lines)


def _params(op: str, fac: Any, bk: Any) -> dict[str, Any]:
    """Symbolic op parameters: a leaky slope in [0, 1], hardtanh's min_val <= max_val."""
    if op == "leaky_relu":
        return {"negative_slope": fac.range("negative_slope", 0.0, 1.0)}
    if op == "hardtanh":
        lo, hi = fac.real("min_val"), fac.real("max_val")
        fac.assume(bk.cmp("<=", lo, hi))
        return {"min_val": lo, "max_val": hi}
    return {}


def _loc(filename: str, pos: ast.Pos) -> str:
    return f"{filename}:{pos.line}:{pos.column}"


def relax_obligations(relax: ast.Relax, scope: list[ast.Relax] | None = None
                      ) -> list[Obligation]:
    """Obligations of ``relax`` for the encodable activations it is the relaxation of (among
    the relaxations ``scope``: a group's relaxation does not cover an op with its own)."""

    ops = [op for name in relax.ops for op in covered_ops(name, elementwise_only=True)
           if op in ACTIVATIONS and relax_for(op, scope or [relax]) is relax]
    out = []
    for op in ops:
        for k, case in enumerate(relax.cases):
            label = "else" if case.cond is None else f"case {k + 1}"
            out.append(Obligation(f"relax {op} {label}", _loc(relax.filename, case.pos),
                                  _relax_builder(relax, op, k)))
    return out


def _relax_builder(relax: ast.Relax, op: str, k: int) -> Callable[[Any, Any], list[Goal]]:
    def build(bk: Any, fac: Any) -> list[Goal]:
        params = _params(op, fac, bk)
        lo, hi = fac.real(relax.lower_name), fac.real(relax.upper_name)
        fac.assume(bk.cmp("<=", lo, hi))
        x = fac.between(relax.var, lo, hi)
        names = {relax.lower_name: V("bound", [lo]), relax.upper_name: V("bound", [hi])}
        names |= {p: V("bound", [t]) for p, t in params.items()}
        # a relaxation parameter is universally quantified over its range: the lines must be
        # sound for every value a program may be given
        names |= {p.name: V("bound", [fac.range(p.name, p.lo, p.hi)]) for p in relax.params}
        ctx = Ctx(bk, 1, names, {}, activation=op, params=params, in_guard=True)

        for j, case in enumerate(relax.cases[:k + 1]):
            if case.cond is None:
                continue
            g = eval_expr(case.cond, ctx).data[0]
            fac.assume(g if j == k else bk.not_(g))
        lower, upper = relax_lines(relax.cases[k], relax, ctx, x)
        fx = bk.activation(op, x, params)
        return [("lower line <= f(x)", lower, fx), ("f(x) <= upper line", fx, upper)]

    return build


# ---- forward domains ---------------------------------------------------------------------

@dataclass
class _Sym:
    """A symbolic state of n neurons: names, plus the noise of its shared generators."""

    names: dict[str, V]
    noise: dict[str, Any]


def _state(domain: ast.Domain, fac: Any, n: int, prefix: str, noise: dict[str, Any]) -> _Sym:
    names: dict[str, V] = {}
    for f in domain.state:
        if f.kind == "bound":
            names[f.name] = V("bound", [fac.real(f"{prefix}{f.name}[{i}]") for i in range(n)])
        else:
            cols = {}
            for k in range(N_GENS):
                cid = f"{f.name}:e{k}"
                if cid not in noise:
                    noise[cid] = fac.noise(f"e{k}" if len(_gens_fields(domain)) == 1
                                           else f"e_{f.name}{k}")
                cols[cid] = {i: fac.real(f"{prefix}{f.name}[{i},{k}]") for i in range(n)}
            names[f.name] = V("gens", Gens(cols))
    return _Sym(names, noise)


def _gens_fields(domain: ast.Domain) -> list[str]:
    return [f.name for f in domain.state if f.kind == "gens"]


def concretize(bk: Any, n: int, domain: ast.Domain, names: dict[str, V],
               noise: dict[str, Any], correlated: bool) -> tuple[list[Any], list[Any]]:
    """Per neuron [L, U] of gamma. Correlated: a shared generator contributes its value at
    the state's noise (``+- sum(|G|)`` read as ``G e``); generators created by the rule are
    fresh noise, each of one neuron, so they contribute ``sum |g|`` on both sides."""
    kinds = {f.name: f.kind for f in domain.state}
    out = []
    for side in ("lower", "upper"):
        def read(field_name: str, g: Gens, side: str = side) -> list[Any]:
            total = [bk.const(0.0)] * n
            for cid, col in g.cols.items():
                if cid in noise:
                    for i, c in col.items():
                        t = bk.mul(c, noise[cid])
                        total[i] = bk.add(total[i], bk.neg(t) if side == "lower" else t)
                else:
                    if len(col) > 1:
                        raise ProveError("a fresh generator is shared by several neurons, so "
                                         "the per-neuron check would be incomplete")
                    for i, c in col.items():
                        total[i] = bk.add(total[i], bk.abs(c))
            return total

        ctx = Ctx(bk, n, dict(names), kinds, domain.gamma)
        if correlated:
            ctx.sum_mode = ("corr", read)
        out.append(gamma_side(ctx, side))
    return out[0], out[1]


def _rule_ctx(bk: Any, n: int, domain: ast.Domain, names: dict[str, V], lazy_bounds: bool
              ) -> Ctx:
    kinds = {f.name: f.kind for f in domain.state}
    ctx = Ctx(bk, n, dict(names), kinds, domain.gamma)
    if lazy_bounds:
        for side, key in (("lower", "l"), ("upper", "u")):
            if key not in kinds:
                def compute(side: str = side) -> V:
                    return V("bound", gamma_side(ctx.child(dict(ctx.names), False), side))
                ctx.lazy[key] = compute
    return ctx


def _output(ctx: Ctx, domain: ast.Domain) -> dict[str, V]:
    return {f.name: coerce(ctx.names[f.name], f.kind, ctx) for f in domain.state}


def _membership(bk: Any, ys: list[Any], lo: list[Any], hi: list[Any], what: str) -> list[Goal]:
    goals = []
    for i, y in enumerate(ys):
        tag = f"[{i}]" if len(ys) > 1 else ""
        goals += [(f"gamma lower{tag} <= {what}{tag}", lo[i], y),
                  (f"{what}{tag} <= gamma upper{tag}", y, hi[i])]
    return goals


def rule_obligation(domain: ast.Domain, rule: ast.Rule, op: str, correlated: bool
                    ) -> Obligation:
    where = _loc(domain.filename, rule.pos)
    shown = rule.ops[0] if len(rule.ops) == 1 else ",".join(rule.ops)
    name = f"{domain.name} rule {shown}" + (f" [{op}]" if op != shown else "")

    def build(bk: Any, fac: Any) -> list[Goal]:
        if op == "input":
            lo, hi = fac.real("lo"), fac.real("hi")
            fac.assume(bk.cmp("<=", lo, hi))
            x = fac.between("x", lo, hi)
            ctx = _rule_ctx(bk, 1, domain, {}, False)
            ctx.names |= {"lo": V("bound", [lo]), "hi": V("bound", [hi])}
            for f in domain.state:
                ctx.names.setdefault(f.name, V("num", 0.0))
            run_block(rule.body, ctx)
            L, U = concretize(bk, 1, domain, _output(ctx, domain), {}, correlated)
            return _membership(bk, [x], L, U, "x")
        if op == "affine":
            s = _state(domain, fac, 2, "", {})
            L, U = concretize(bk, 2, domain, s.names, s.noise, correlated)
            xs = [fac.between(f"x[{i}]", L[i], U[i]) for i in range(2)]
            W = [[fac.real(f"W[{i},{j}]") for j in range(2)] for i in range(2)]
            b = [fac.real(f"b[{i}]") for i in range(2)]
            ctx = _rule_ctx(bk, 2, domain, s.names, True)
            ctx.W = W
            ctx.names["b"] = V("bound", b)
            run_block(rule.body, ctx)
            ys = [bk.add(bk.add(bk.mul(W[i][0], xs[0]), bk.mul(W[i][1], xs[1])), b[i])
                  for i in range(2)]
            L2, U2 = concretize(bk, 2, domain, _output(ctx, domain), s.noise, correlated)
            return _membership(bk, ys, L2, U2, "W x + b")
        if op == "add":
            p = _state(domain, fac, 2, "p.", {})
            q = _state(domain, fac, 2, "q.", p.noise)
            Lp, Up = concretize(bk, 2, domain, p.names, p.noise, correlated)
            Lq, Uq = concretize(bk, 2, domain, q.names, q.noise, correlated)
            xp = [fac.between(f"xp[{i}]", Lp[i], Up[i]) for i in range(2)]
            xq = [fac.between(f"xq[{i}]", Lq[i], Uq[i]) for i in range(2)]
            ctx = _rule_ctx(bk, 2, domain, p.names, False)
            pn, qn = rule.params
            ctx.inputs = {pn: p.names, qn: q.names}
            run_block(rule.body, ctx)
            L2, U2 = concretize(bk, 2, domain, _output(ctx, domain), p.noise, correlated)
            ys = [bk.add(xp[i], xq[i]) for i in range(2)]
            return _membership(bk, ys, L2, U2, f"{pn} + {qn}")
        # an activation, elementwise: one neuron with shared generators is the general case
        params = _params(op, fac, bk)
        s = _state(domain, fac, 1, "", {})
        L, U = concretize(bk, 1, domain, s.names, s.noise, correlated)
        x = fac.between("x", L[0], U[0])
        ctx = _rule_ctx(bk, 1, domain, s.names, True)
        ctx.activation, ctx.params = op, params
        ctx.names |= {k: V("bound", [t]) for k, t in params.items()}
        run_block(rule.body, ctx)
        L2, U2 = concretize(bk, 1, domain, _output(ctx, domain), s.noise, correlated)
        return _membership(bk, [bk.activation(op, x, params)], L2, U2, "f(x)")

    note = "" if correlated or not _gens_fields(domain) else \
        "generators read as an interval (gamma is not 'A - sum(|G|) <= x <= B + sum(|G|)')"
    return Obligation(name, where, build, note)


def gamma_is_symmetric(domain: ast.Domain, timeout_s: float) -> bool:
    """Whether gamma reads ``A - sum(|G|) <= x <= B + sum(|G|)`` for every gens variable G
    (then a state means ``x in [A + G e, B + G e]`` for shared noise e)."""
    import z3  # lazy: optional dependency z3

    gens = _gens_fields(domain)
    if not gens or domain.gamma is None:
        return False
    bk = Z3Backend()
    fac = Z3Vars(bk)
    s = _state(domain, fac, 1, "", {})
    syms = {g: bk.var(f"S_{g}") for g in gens}
    kinds = {f.name: f.kind for f in domain.state}
    total = bk.const(0.0)
    for t in syms.values():
        total = bk.add(total, t)
    claims = []
    for side, sign in (("lower", -1.0), ("upper", 1.0)):
        with_s = Ctx(bk, 1, dict(s.names), kinds, domain.gamma)
        with_s.sum_mode = ("sym", lambda name, g: [syms[name]])
        zero = Ctx(bk, 1, dict(s.names), kinds, domain.gamma)
        zero.sum_mode = ("sym", lambda name, g: [bk.const(0.0)])
        a, b = gamma_side(with_s, side)[0], gamma_side(zero, side)[0]
        claims.append(a == b + bk.mul(bk.const(sign), total))
    solver = z3.Solver()
    solver.set(timeout=int(timeout_s * 1000))
    solver.add(z3.Not(z3.And(*claims)))
    return bool(solver.check() == z3.unsat)


def domain_obligations(domain: ast.Domain, timeout_s: float) -> list[Obligation]:
    correlated = gamma_is_symmetric(domain, timeout_s)
    out = []
    for op in ("input", "affine", "add"):
        rule = domain.rule_for(op)
        if rule is not None:
            out.append(rule_obligation(domain, rule, op, correlated))

    for op in ACTIVATIONS:
        rule = find_rule(domain, op)
        if rule is not None:
            out.append(rule_obligation(domain, rule, op, correlated))
    return out


# ---- solving -----------------------------------------------------------------------------

def _numeric(ob: Obligation, n: int, fixed: dict[str, float] | None = None
             ) -> tuple[int, float, dict[str, float] | None]:
    """(points tested, worst violation, a violating point) of the obligation in float64."""
    bk = NumpyBackend()
    fac = NumpyVars(n, fixed=fixed)
    goals = ob.build(bk, fac)
    mask = np.broadcast_to(fac.mask, (fac.n if fixed is None else 1,))
    tested = int(mask.sum())
    worst, point = 0.0, None
    for what, lhs, rhs in goals:
        lhs = np.broadcast_to(lhs, mask.shape)
        rhs = np.broadcast_to(rhs, mask.shape)
        with np.errstate(all="ignore"):
            tol = 1e-9 * (1.0 + np.abs(lhs) + np.abs(rhs))
            excess = np.where(np.isnan(lhs) | np.isnan(rhs), np.inf, lhs - rhs - tol)
        excess = np.where(mask, excess, -np.inf)
        j = int(np.argmax(excess))
        if excess[j] > 0 and excess[j] > worst:
            worst = float(excess[j])
            point = {k: float(np.broadcast_to(v, mask.shape)[j]) for k, v in fac.vars.items()}
            point |= {"lhs": float(lhs[j]), "rhs": float(rhs[j])}
            point["claim"] = what  # type: ignore[assignment]
    return tested, worst, point


def prove(ob: Obligation, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProofResult:
    import z3  # lazy: optional dependency z3

    start = time.perf_counter()
    bk = Z3Backend()
    fac = Z3Vars(bk)
    try:
        goals = ob.build(bk, fac)
    except ProveError as err:
        return _fallback(ob, f"{err}", start)
    facts = fac.assumptions + bk.facts + bk.function_facts()
    undecided = []
    for what, lhs, rhs in goals:
        verdict, m, why = _check(z3, facts, z3.Not(lhs <= rhs), _guard_cases(z3, bk),
                                 timeout_s)
        if verdict == z3.unsat:
            continue
        if verdict == z3.sat:
            point = {k: model_value(m, v) for k, v in fac.vars.items()}
            if not bk.uses_functions():
                cex = point | {"lhs": model_value(m, lhs), "rhs": model_value(m, rhs)}
                return ProofResult(ob.name, ob.where, "refuted", f"{what} fails", cex,
                                   time.perf_counter() - start)
            # the model may use an f that is monotone but not sigmoid: re-check with the real one
            _, worst, real = _numeric(ob, 1, fixed=point)
            if real is not None:
                claim = real.pop("claim")
                return ProofResult(ob.name, ob.where, "refuted",
                                   f"{claim} fails (solver's point, re-checked in float64)",
                                   real, time.perf_counter() - start)
            undecided.append(f"{what}: the solver's counterexample needs a monotone function "
                             f"other than the real one")
        else:
            undecided.append(f"{what}: {why}")
    if not undecided:
        detail = ob.note
        if bk.uses_functions():
            names = ", ".join(sorted(bk.funcs))
            detail = (f"for every monotone non-decreasing {names} with the real range "
                      f"(all that was assumed of {names})") + (f"; {ob.note}" if ob.note else "")
        return ProofResult(ob.name, ob.where, "proved", detail, None,
                           time.perf_counter() - start)
    reason = "; ".join(undecided)
    if bk.uses_functions():
        reason = (f"{', '.join(sorted(bk.funcs))} not polynomial, monotonicity alone does not "
                  f"decide it ({reason})")
    return _fallback(ob, reason, start)


def _guard_cases(z3: Any, bk: Z3Backend, limit: int = 32) -> list[list[Any]]:
    """One list of conditions per combination of first-matching branches of the rule's
    guarded statements, per neuron (a single case, no split, past ``limit`` combinations)."""
    cases: list[list[Any]] = [[]]
    for chain in bk.guard_chains:
        n = len(chain[0]) if chain else 0
        for i in range(n):
            options = []
            for j in range(len(chain) + 1):
                opt = [z3.Not(chain[k][i]) for k in range(j)]
                if j < len(chain):
                    opt.append(chain[j][i])
                options.append(opt)
            cases = [c + o for c in cases for o in options]
            if len(cases) > limit:
                return [[]]
    return cases


def _check(z3: Any, facts: list[Any], negated: Any, cases: list[list[Any]], timeout_s: float
           ) -> tuple[Any, Any, str]:
    """unsat when the negated goal is impossible in every case; else the first sat case's
    model, or unknown with the solver's reason."""
    unknown = ""
    for case in cases:
        solver = z3.Solver()
        solver.set(timeout=int(timeout_s * 1000))
        solver.add(*facts, *case, negated)
        verdict = solver.check()
        if verdict == z3.sat:
            return verdict, solver.model(), ""
        if verdict != z3.unsat:
            unknown = solver.reason_unknown() or "unknown"
    if unknown:
        return z3.unknown, None, unknown
    return z3.unsat, None, ""


def _fallback(ob: Obligation, reason: str, start: float) -> ProofResult:
    """Not provable here: test the same formula on a float64 sample grid instead."""
    try:
        tested, worst, point = _numeric(ob, N_SAMPLES)
    except ProveError as err:
        return ProofResult(ob.name, ob.where, "not provable here", f"{reason}; {err}", None,
                           time.perf_counter() - start)
    if point is not None:
        claim = point.pop("claim")
        return ProofResult(ob.name, ob.where, "refuted",
                           f"{claim} fails on the float64 test grid (by {worst:.3g}); {reason}",
                           point, time.perf_counter() - start)
    return ProofResult(ob.name, ob.where, "not provable here",
                       f"{reason}; tested instead on {tested} float64 points (zeros, +-1, 1e-6 "
                       f"to 1e3 scales, guard surfaces, ends of every interval): no violation "
                       f"above 1e-9 relative", None, time.perf_counter() - start)


# ---- files -------------------------------------------------------------------------------

def file_obligations(path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S
                     ) -> list[Obligation]:
    """Every relaxation the file sees (its own and imported) and every forward domain it
    defines, imports or takes activation bounds from; the file is loaded and checked first
    (syntax and type errors raise ``DSLError`` at file:line:col)."""

    module = load_module(path)
    domains: list[ast.Domain] = []
    seen: set[tuple[str, str]] = set()

    def add(d: ast.Domain) -> None:
        key = (d.filename, d.name)
        if key not in seen and not d.is_linear and d.state:
            seen.add(key)
            domains.append(d)

    for d in getattr(module, "domains_imported", []):
        add(d)
    for d in module.domains:
        loaded = load_domain(f"{path}:{d.name}")  # the static checker, with positions
        if loaded.intermediate is not None:
            add(loaded.intermediate)
        add(d)
    obligations = []
    relax_seen: set[tuple[str, int, int]] = set()
    for r in module.relaxes:
        key = (r.filename, r.pos.line, r.pos.column)
        if key not in relax_seen:
            relax_seen.add(key)
            obligations += relax_obligations(r, module.relaxes)
    for d in domains:
        obligations += domain_obligations(d, timeout_s)
    return obligations


def prove_file(path: str | Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> ProofReport:
    require_solver()
    if not Path(path).is_file():

        raise DSLError("no such domain file", filename=str(path))
    report = ProofReport(str(path))
    for ob in file_obligations(path, timeout_s):
        report.results.append(prove(ob, timeout_s))
    return report
