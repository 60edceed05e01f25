"""(IR, domain) -> the source of a bound program.

A forward domain (Box, HBox, Zonotope) becomes straight-line code: one block of lines per
IR node, compiled from the domain's rule for that op. A back-substitution domain (DeepPoly,
CROWN-IBP) becomes a forward pass of its intermediate-bounds domain, relaxation lines for
every activation, and one generated back-substitution function per bounded node.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import domains as registry
from ..dsl import ast
from ..dsl.loader import LoadedDomain, load_domain
from ..errors import DSLError, TraceError
from . import linear_maps as lm
from . import ops
from .exprs import (
    Scope,
    as_tensor,
    compile_expr,
    e_pos,
    linearize,
    mentions,
    num,
)
from .ir import Graph, Node
from .namespace import GLOBALS, RUNTIME, load_generated  # noqa: F401 - re-exported

# the fixed names generated code binds itself (a spec's matrices; the parameters of
# relaxation functions and lambdas): Emitter.fresh never hands them out, nor GLOBALS
FIXED_LOCALS = ("spec_abs", "spec_w", "spec_w_abs", "spec_b", "lb", "ub", "l", "u", "t",
                "given")


# the torch code of every elementwise activation, from the op table
ACTIVATION_CODE = {op.name: op.code for op in ops.ELEMENTWISE if op.code is not None}


def op_code(op: str, x: str, params: dict) -> str:
    """Torch code of an activation or pooling node applied to ``x`` (the op table's)."""
    code = ops.get(op).code
    assert code is not None, op
    return code(x, params)


@dataclass
class Emitter:
    lines: list[str] = field(default_factory=list)
    indent: int = 1
    used: set[str] = field(default_factory=lambda: {*GLOBALS, *FIXED_LOCALS})
    shared: dict[str, str] = field(default_factory=dict)  # expression -> variable holding it

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def value(self, stem: str, expr: str) -> str:
        """A variable holding ``expr``, emitted once per program (straight-line code only)."""
        assert self.indent == 1, "shared values live at the program's top level"
        if expr not in self.shared:
            self.shared[expr] = self.fresh(stem)
            self.emit(f"{self.shared[expr]} = {expr}")
        return self.shared[expr]

    def fresh(self, stem: str) -> str:
        stem = re.sub(r"[^0-9A-Za-z_]", "_", stem).strip("_") or "v"
        if stem[0].isdigit():
            stem = "v" + stem
        i = 0
        name = stem
        while name in self.used:
            i += 1
            name = f"{stem}_{i}"
        self.used.add(name)
        return name


class RuleCompiler:
    """Compiles a domain's rules at IR nodes into lines of an :class:`Emitter`."""

    def __init__(self, domain: ast.Domain, out: Emitter) -> None:
        self.domain = domain
        self.out = out
        self.kinds = {f.name: f.kind for f in domain.state}

    def rule(self, node: Node) -> ast.Rule:
        rule = find_rule(self.domain, node.op)
        if rule is None:
            what = {"add": "add (a residual connection or a sum of two branches)"}.get(
                node.op, node.op)
            raise TraceError(f"domain {self.domain.name} has no rule for {what}, needed by "
                             f"{node.origin or '%' + node.name} ({self.domain.filename})"
                             f"{builtin_rules_hint(node.op)}")
        return rule

    def scope(self, state: dict[str, str], ref: str, node: Node | None) -> Scope:
        names = {k: (v, self.kinds[k]) for k, v in state.items()}
        s = Scope(self.domain, names, self.out.emit, self.out.fresh, ref)
        s.newgens_key = node.name if node is not None else "g"
        if state and self.domain.gamma is not None:
            for side, expr in (("l", self.domain.gamma.lower), ("u", self.domain.gamma.upper)):
                if side not in names:
                    s.lazy[side] = self._gamma_side(s, expr, side)
        if node is not None and (node.op in ACTIVATION_CODE or ops.is_pool(node.op)):
            bind_op(s, node.op, node.attrs.get("params", {}))
        return s

    def _gamma_side(self, s: Scope, expr: ast.Expr, side: str):
        def compute():
            code, kind = compile_expr(expr, s)
            return s.tmp(as_tensor((code, kind), s), side), "bound"
        return compute

    def run(self, node: Node, rule: ast.Rule, s: Scope, state: dict[str, str]) -> dict[str, str]:
        """Execute the rule body; returns the new state (variable -> code var)."""
        self._block(rule.body, s)
        new: dict[str, str] = {}
        for f in self.domain.state:
            code, kind = s.names[f.name]
            new[f.name] = self._coerce(code, kind, f, s, rule.pos)
        return new

    def _coerce(self, code: str, kind: str, f: ast.StateField, s: Scope, pos: ast.Pos) -> str:
        if kind == f.kind:
            return code
        if kind == "num" and f.kind == "bound":
            return s.tmp(f"rt.full_like(value={code}, like={s.ref})")
        if kind == "num" and f.kind == "gens" and float(code) == 0.0:
            return s.tmp(f"rt.Gens.zero(like={s.ref})", "G")
        raise s.error(f"state variable '{f.name}' is {f.kind} but is assigned a {kind}", pos)

    def _block(self, body: tuple[ast.Stmt, ...], s: Scope) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assign):
                self._assign(stmt, s)
            else:
                self._guarded(stmt, s)

    def _assign(self, stmt: ast.Assign, s: Scope) -> None:
        if len(stmt.targets) != 1:
            raise s.error("multiple targets are only for relaxations", stmt.pos)
        target = stmt.targets[0]
        if target in ("W", "b", "lo", "hi", "f", "x"):
            raise s.error(f"'{target}' is reserved and cannot be assigned", stmt.pos)
        code, kind = compile_expr(stmt.value, s)
        if target in self.kinds:
            f = next(f for f in self.domain.state if f.name == target)
            code = self._coerce(code, kind, f, s, stmt.pos)
            kind = f.kind
        if kind in ("linop", "absgens"):
            raise s.error(f"cannot store a value of kind {kind} in '{target}'", stmt.pos)
        var = s.fresh(f"{s.newgens_key}_{target}")
        self.out.emit(f"{var} = {code}")
        s.names[target] = (var, kind)

    def _guarded(self, stmt: ast.Guarded, s: Scope) -> None:
        conds: list[str | None] = []
        for br in stmt.branches:
            if br.cond is None:
                conds.append(None)
                continue
            code, kind = compile_expr(br.cond, s)
            if kind != "bool":
                raise s.error("a guard must be a condition", br.pos)
            conds.append(s.tmp(code, "g"))
        before = dict(s.names)
        results = []
        for br in stmt.branches:
            sub = Scope(s.domain, dict(before), s.emit, s.fresh, s.ref, s.linop, s.linop_code,
                        s.gens_map, s.activation, s.inputs, s.lazy, s.newgens_key, True, s.memo,
                        s.op_info)
            self._block(br.body, sub)
            results.append(sub.names)
        if stmt.branches[-1].cond is not None:
            results.append(before)
            conds.append(None)
        changed = [k for k in self.kinds if any(r[k] != before[k] for r in results)]
        for k in changed:
            f = next(f for f in self.domain.state if f.name == k)
            acc = self._coerce(*results[-1][k], f, s, stmt.pos)
            for cond, res in zip(reversed(conds[:-1]), reversed(results[:-1]), strict=True):
                val = self._coerce(*res[k], f, s, stmt.pos)
                if val != acc:
                    code = (f"rt.where(mask={cond}, a={val}, b={acc})" if f.kind == "gens"
                            else f"torch.where({cond}, {val}, {acc})")
                    acc = s.tmp(code, f"{s.newgens_key}_{k}")
            s.names[k] = (acc, f.kind)


def has_rule(loaded: LoadedDomain, op: str) -> bool:
    """Whether the domain bounds ``op`` directly (else :mod:`lowering` rewrites it)."""
    if loaded.intermediate is None:
        return find_rule(loaded.domain, op) is not None
    if ops.is_pool(op):  # back-substitution relaxes a max itself (backsub/pool.py)
        return find_rule(loaded.intermediate, op) is not None
    return (find_rule(loaded.intermediate, op) is not None
            and relax_for(op, loaded.relaxes) is not None)


def builtin_rules_hint(op: str) -> str:
    """'; built-in domains with a rule for it: ...' (the message of a missing rule)."""
    having = [name for name in registry.NAMES if has_rule(load_domain(name), op)]
    return (f"; built-in domains with a rule for {op}: {', '.join(having)}" if having
            else f"; no built-in domain has a rule for {op}")


def find_rule(domain: ast.Domain, op: str) -> ast.Rule | None:
    """The domain's rule for ``op``: its own, else the first of its groups (op table)."""
    for name in ops.covering(op):
        rule = domain.rule_for(name)
        if rule is not None:
            return rule
    return None


def bind_op(s: Scope, op: str, params: dict) -> None:
    """Make the op's f, df, dmin, convex, concave and parameters visible to a rule body."""
    s.activation = lambda x, o=op, p=params: op_code(o, x, p)
    info = ops.OPS[op]
    if info.deriv is not None:
        s.op_info = (info, params)
    for k, v in params.items():
        if k in s.names:
            raise TraceError(f"parameter {k!r} of {op} shadows a variable of domain "
                             f"{s.domain.name}")
        s.names[k] = (num(v), "num")
    if info.argmin is not None:
        at, value = info.argmin(params)
        s.names["argmin"] = (num(at), "num")
        s.names["fmin"] = (num(value), "num")


def _map_code(node_map, ctx: str):
    def linop_code(x: str, absolute: bool, with_bias: bool = False) -> str:
        return node_map.apply(x, absolute, with_bias)

    def gens_map(g: str, absolute: bool) -> str:
        # generator sets get the map's structure, so windows and scales stay compact
        fn = f"lambda t: {node_map.apply('t', absolute)}"
        if isinstance(node_map, lm.Elementwise):
            if node_map.scale is None:
                return g
            scale = repr(node_map.scale) if isinstance(node_map.scale, float) else node_map.scale
            return f"{g}.elementwise(scale={scale}, fn={fn}, {_gens_flags(ctx)})"
        if isinstance(node_map, lm.Conv) and node_map.dims == 2:
            return (f"{g}.conv2d(weight={node_map.weight}, stride={node_map.stride}, "
                    f"padding={node_map.padding}, dilation={node_map.dilation}, "
                    f"groups={node_map.groups}, fn={fn}, {_gens_flags(ctx)})")
        if isinstance(node_map, lm.Dense):
            return f"{g}.linear(weight={node_map.weight}, fn={fn}, {_gens_flags(ctx)})"
        return f"{g}.map(fn={fn}, compact={ctx}.compact)"

    return linop_code, gens_map


def _gens_flags(ctx: str) -> str:
    """Keyword arguments of a generator set's linear maps: the call's flags."""
    return f"compact={ctx}.compact, patches={ctx}.options.gens_patches"


def forward_pass(graph: Graph, domain: ast.Domain, out: Emitter, ctx: str,
                 hook=None, nodes: list[Node] | None = None,
                 states: dict[str, dict[str, str]] | None = None) -> dict[str, dict[str, str]]:
    """Emit the forward domain's rules node by node; returns each node's state variables.

    ``hook(node, state)`` may replace a node's state after it is computed (DeepPoly's
    refinement of Box bounds by back-substitution). ``nodes`` (default: all) and ``states``
    (the states computed so far) let a caller emit part of the graph elsewhere. Reshapes and
    concatenations move state as it is (:data:`_STRUCTURAL`); every other op runs the
    domain's rule in a scope set up by its kind (:data:`_SCOPES`).
    """
    walk = _ForwardPass(domain, out, ctx, {} if states is None else dict(states))
    for node in graph.nodes if nodes is None else nodes:
        out.emit("")
        out.emit(f"# {node.describe()}")
        move = _STRUCTURAL.get(node.kind)
        walk.states[node.name] = move(walk, node) if move is not None else walk.rule(node)
        if hook is not None:
            replaced = hook(node, walk.states[node.name])
            if replaced is not None:
                walk.states[node.name] = replaced
    return walk.states


class _ForwardPass:
    """The state of one :func:`forward_pass`: the rule compiler and each node's state."""

    def __init__(self, domain: ast.Domain, out: Emitter, ctx: str,
                 states: dict[str, dict[str, str]]) -> None:
        self.domain, self.out, self.ctx, self.states = domain, out, ctx, states
        self.rc = RuleCompiler(domain, out)

    def reshape(self, node: Node) -> dict[str, str]:
        state = {k: self.out.fresh(f"{node.name}_{k}") for k in self.rc.kinds}
        for k, var in state.items():
            self.out.emit(f"{var} = rt.reshape(value={self.states[node.inputs[0]][k]}, "
                          f"batch=lo.shape[0], shape={node.shape})")
        return state

    def cat(self, node: Node) -> dict[str, str]:
        state = {k: self.out.fresh(f"{node.name}_{k}") for k in self.rc.kinds}
        for k, var in state.items():
            parts = ", ".join(self.states[i][k] for i in node.inputs)
            self.out.emit(f"{var} = rt.cat(values=[{parts}], dim={node.attrs['dim']}, "
                          f"compact={self.ctx}.compact)")
        return state

    def rule(self, node: Node) -> dict[str, str]:
        """The node's state by the domain's rule for its op."""
        rule = self.rc.rule(node)
        scope = _SCOPES.get(node.kind, _ForwardPass.unary_scope)
        s, state_in = scope(self, node, rule)
        info = ops.OPS.get(node.op)
        if info is not None and info.valid is not None:
            _require_range(node, info, s, self.out, self.ctx)
        return self.rc.run(node, rule, s, state_in)

    def input_scope(self, node: Node, rule: ast.Rule) -> tuple[Scope, dict[str, str]]:
        s = self.rc.scope({}, "lo", node)
        s.names.update({"lo": ("lo", "bound"), "hi": ("hi", "bound")})
        for k in self.rc.kinds:
            s.names.setdefault(k, ("0.0", "num"))
        return s, {}

    def _input_ref(self, state_in: dict[str, str]) -> str:
        kinds = self.rc.kinds
        return next(v for k, v in state_in.items() if kinds[k] == "bound") \
            if any(kinds[k] == "bound" for k in state_in) else "lo"

    def unary_scope(self, node: Node, rule: ast.Rule) -> tuple[Scope, dict[str, str]]:
        state_in = self.states[node.inputs[0]]
        return self.rc.scope(state_in, self._input_ref(state_in), node), state_in

    def affine_scope(self, node: Node, rule: ast.Rule) -> tuple[Scope, dict[str, str]]:
        s, state_in = self.unary_scope(node, rule)
        m = node.attrs["map"]
        s.linop = m
        s.linop_code, s.gens_map = _map_code(m, self.ctx)
        s.names["b"] = (m.bias, "bound") if m.bias else ("0.0", "num")
        return s, state_in

    def binary_scope(self, node: Node, rule: ast.Rule) -> tuple[Scope, dict[str, str]]:
        """Both inputs' states under the rule's two parameter names (add, mul)."""
        state_in = self.states[node.inputs[0]]
        s = self.rc.scope({}, self._input_ref(state_in), node)
        if len(rule.params) != 2:
            raise DSLError(f"rule {node.op} must name its two inputs: rule "
                           f"{node.op}(p, q)", self.domain.source, self.domain.filename,
                           rule.pos.line, rule.pos.column)
        kinds = self.rc.kinds
        for pname, inp in zip(rule.params, node.inputs, strict=True):
            s.inputs[pname] = {k: (v, kinds[k]) for k, v in self.states[inp].items()}
        for k in kinds:  # start from the first input; the body overwrites
            s.names[k] = (state_in[k], kinds[k])
        return s, state_in


# ops that move state as it is, by kind (no rule)
_STRUCTURAL: dict[str, Callable[[_ForwardPass, Node], dict[str, str]]] = {
    "reshape": _ForwardPass.reshape, "cat": _ForwardPass.cat}
# the scope a rule runs in, by kind (default: one input, the elementwise ops and pooling)
_SCOPES: dict[str, Callable[[_ForwardPass, Node, ast.Rule], tuple[Scope, dict[str, str]]]] = {
    "input": _ForwardPass.input_scope, "affine": _ForwardPass.affine_scope,
    "add": _ForwardPass.binary_scope, "product": _ForwardPass.binary_scope}


def _require_range(node: Node, info: ops.Op, s: Scope, out: Emitter, ctx: str) -> None:
    """Emit the check that an op defined on part of the line (sqrt, log, reciprocal) gets
    input bounds inside it: otherwise the call fails naming the node and the range."""
    assert info.valid is not None
    lo_v, hi_v, open_ends = info.valid
    pos = ast.Pos(0, 0)
    l_code = as_tensor(compile_expr(ast.Name("l", pos), s), s)
    u_code = as_tensor(compile_expr(ast.Name("u", pos), s), s)
    where = f"{node.op} %{node.name}" + (f" ({node.origin})" if node.origin else "")
    out.emit(f"rt.require_range(lower={l_code}, upper={u_code}, lo={_float_code(lo_v)}, "
             f"hi={_float_code(hi_v)}, open_ends={open_ends}, where={where!r}, "
             f"compact={ctx}.compact)")


def _float_code(v: float) -> str:
    return f"float({str(v)!r})" if v in (float("inf"), float("-inf")) else repr(float(v))


def spec_rule(domain: ast.Domain, out: Emitter, state: dict[str, str], ctx: str,
              last: lm.Dense | None = None) -> dict[str, str]:
    """Apply the domain's affine rule with W = spec (per sample) and b = 0.

    With ``last`` (the output's linear layer, ``state`` its input's state) the spec is folded
    into it: W = spec @ W_last and b = spec @ b_last. Margins of the folded layer are tighter
    for non-relational domains (Box bounds each logit separately, then subtracts) and equal
    for zonotopes (affine maps are exact there).
    """
    if last is not None:
        out.emit(f"spec_w = torch.matmul(spec, {last.weight})")
        out.emit("spec_w_abs = spec_w.abs()")
        if last.bias is not None:
            out.emit(f"spec_b = torch.matmul(spec, {last.bias})")
    rc = RuleCompiler(domain, out)
    rule = domain.rule_for("affine")
    if rule is None:
        raise TraceError(f"domain {domain.name} has no affine rule")
    ref = next((v for k, v in state.items() if rc.kinds[k] == "bound"), "lo")
    fake = Node("spec", "affine", [], ())
    s = rc.scope(state, ref, fake)

    w = "spec" if last is None else "spec_w"
    has_bias = last is not None and last.bias is not None

    def linop_code(x: str, absolute: bool, with_bias: bool = False) -> str:
        code = f"rt.rows_dot(rows={w + '_abs' if absolute else w}, x={x}.flatten(1))"
        return f"({code} + spec_b)" if with_bias and has_bias else code

    def gens_map(g: str, absolute: bool) -> str:
        return f"{g}.spec(c={w}, {_gens_flags(ctx)})"

    s.linop, s.linop_code, s.gens_map = object(), linop_code, gens_map
    s.names["b"] = ("spec_b", "bound") if has_bias else ("0.0", "num")
    return rc.run(fake, rule, s, state)


def concretize(domain: ast.Domain, out: Emitter, state: dict[str, str]) -> tuple[str, str]:
    rc = RuleCompiler(domain, out)
    if domain.gamma is None:
        raise DSLError(f"domain {domain.name} has no gamma block (its concretisation)",
                       domain.source, domain.filename, domain.pos.line, domain.pos.column)
    ref = next((v for k, v in state.items() if rc.kinds[k] == "bound"), "lo")
    s = rc.scope(state, ref, None)
    lo = compile_expr(ast.Name("l", domain.gamma.pos), s) if "l" not in rc.kinds else \
        (state["l"], "bound")
    hi = compile_expr(ast.Name("u", domain.gamma.pos), s) if "u" not in rc.kinds else \
        (state["u"], "bound")
    return as_tensor(lo, s), as_tensor(hi, s)


# ---- relaxations -----------------------------------------------------------------------

def relax_function(relax: ast.Relax, op: str, params: dict, out: Emitter, domain: ast.Domain,
                   filename: str, source: str) -> str:
    """Emit ``def relax_<op>(l, u, needs_only=False)`` returning ((a_lo, b_lo, a_hi, b_hi),
    needs), or only ``needs`` when ``needs_only``; its name.

    ``needs`` marks neurons whose lines depend on l or u: only those gain from tighter bounds.
    It reads the guards only, so asking for it alone (before the bounds are refined) skips
    the lines. Constant lines stay numbers inside ``torch.where`` (no filled tensors).

    A relaxation with parameters (``param alpha in [0, 1] = ...``) gets a fourth argument,
    ``given``: None (every parameter at its initial value), or a dict of parameter name ->
    per-neuron values, clamped into the range; a missing entry is filled with the initial
    value (how ``BoundProgram.optimize`` learns where to start).
    """
    fn_name = out.fresh(f"relax_{op}")
    body = Emitter(indent=out.indent + 1, used=out.used)
    src_domain = ast.Domain("relax", relax.pos, filename=filename, source=source)
    names = {relax.lower_name: ("l", "bound"), relax.upper_name: ("u", "bound")}
    line_vars = [relax.var]
    if relax.arity == 2:  # planes in x and y over [l, u] x [l2, u2]
        names |= {relax.lower2: ("l2", "bound"), relax.upper2: ("u2", "bound")}
        line_vars.append(relax.var2)
    s = Scope(src_domain, names, body.emit, body.fresh, "l", in_guard=True)
    if op in ops.ACTIVATIONS:
        bind_op(s, op, params)
    param_names = _check_params(relax, filename, source)
    guards: list[str | None] = []
    depends: list[bool] = []
    bounds_names = set(names) | param_names
    for case in relax.cases:
        if case.cond is not None:
            if mentions(case.cond, set(line_vars)):
                raise DSLError(f"a relaxation's guard cannot depend on {relax.var}", source,
                               filename, case.pos.line, case.pos.column)
            if mentions(case.cond, param_names):
                raise DSLError("a relaxation's guard cannot read a parameter (guards pick "
                               "the case, parameters only move lines within it)", source,
                               filename, case.pos.line, case.pos.column)
            code, kind = compile_expr(case.cond, s)
            if kind != "bool":
                raise DSLError("a relaxation guard must be a condition", source, filename,
                               case.pos.line, case.pos.column)
            guards.append(s.tmp(code, "g"))
        else:
            guards.append(None)
        depends.append(mentions(case.lower, bounds_names | {"f"}) or
                       mentions(case.upper, bounds_names | {"f"}) or
                       any(isinstance(p, ast.Call) and p.func == "f" for p in (case.lower,
                                                                              case.upper)))
    # neurons in a case whose lines read l or u (or f of them)
    needs = "torch.zeros_like(l, dtype=torch.bool)"
    taken = "torch.zeros_like(l, dtype=torch.bool)"
    for g, dep in zip(guards, depends, strict=True):
        sel = f"(~{taken})" if g is None else f"({g} & ~{taken})"
        if dep:
            needs = f"({needs} | {sel})"
        if g is not None:
            taken = s.tmp(f"({taken} | {g})", "taken")
    needs_var = s.tmp(needs, "needs")
    body.emit(f"if needs_only: return {needs_var}")
    for param in relax.params:  # after the guards: a parameter only moves lines
        init = as_tensor(compile_expr(param.init, s), s)
        s.names[param.name] = (s.tmp(f"rt.relax_param(given=given, name={param.name!r}, "
                                     f"init={init}, like=l, lo={num(param.lo)}, "
                                     f"hi={num(param.hi)})", param.name), "bound")
    parts: list[list[tuple[str, str]]] = []
    for case in relax.cases:
        lines = []
        for line in (case.lower, case.upper):
            for piece in _line_pieces(line, line_vars, filename, source):
                value = compile_expr(piece, s)
                lines.append(value if value[1] == "num" else (as_tensor(value, s), "bound"))
        parts.append(lines)
    labels = (["a_lo", "b_lo", "a_hi", "b_hi"] if relax.arity == 1 else
              ["ax_lo", "ay_lo", "b_lo", "ax_hi", "ay_hi", "b_hi"])
    results = []
    for i, label in enumerate(labels):
        acc = parts[-1][i]
        for g, p in zip(reversed(guards[:-1]), reversed(parts[:-1]), strict=True):
            if p[i][1] == "num" and acc[1] == "num":  # torch.where of two numbers: a tensor
                acc = (as_tensor(acc, s), "bound")
            acc = (f"torch.where({g}, {p[i][0]}, {acc[0]})", "bound")
        results.append(s.tmp(as_tensor(acc, s), label))
    extra = ", given=None" if relax.params else ""
    out.emit(f"def {fn_name}(l, u{', l2, u2' if relax.arity == 2 else ''}, "
             f"needs_only=False{extra}):")
    out.lines.extend(body.lines)
    out.emit(f"    return ({', '.join(results)}), {needs_var}")
    return fn_name


def _check_params(relax: ast.Relax, filename: str, source: str) -> set[str]:
    """The names of ``relax``'s parameters, after checking their ranges, names and constant
    initial values (an initial value that reads l or u is clamped into the range at run
    time)."""
    taken = {relax.var, relax.lower_name, relax.upper_name, "f"}
    for param in relax.params:
        def fail(message: str, pos: ast.Pos = param.pos, name: str = param.name) -> DSLError:
            return DSLError(f"parameter '{name}': {message}", source, filename,
                            pos.line, pos.column)
        if param.name in taken:
            raise fail("the name is already taken in this relaxation")
        if not param.lo <= param.hi:
            raise fail(f"empty range [{param.lo:g}, {param.hi:g}] (lower end above upper end)")
        if isinstance(param.init, ast.Num) and not param.lo <= param.init.value <= param.hi:
            raise fail(f"initial value {param.init.value:g} is outside its range "
                       f"[{param.lo:g}, {param.hi:g}]", e_pos(param.init))
        if mentions(param.init, {relax.var}):
            raise fail(f"the initial value cannot read {relax.var} (it may read "
                       f"{relax.lower_name} and {relax.upper_name})", e_pos(param.init))
        taken.add(param.name)
    return {p.name for p in relax.params}


def _line_pieces(line: ast.Expr, line_vars: list[str], filename: str, source: str
                 ) -> list[ast.Expr]:
    """(slope, intercept), or (slope in x, slope in y, intercept) for a plane."""
    slope, rest = linearize(line, line_vars[0], None, filename, source)
    if len(line_vars) == 1:
        return [slope, rest]
    if mentions(slope, {line_vars[1]}):
        p = e_pos(line)
        raise DSLError(f"a relaxation plane must be linear in {line_vars[0]} and "
                       f"{line_vars[1]}; this line multiplies them", source, filename,
                       p.line, p.column)
    slope_y, intercept = linearize(rest, line_vars[1], None, filename, source)
    return [slope, slope_y, intercept]


def relax_for(op: str, relaxes: list[ast.Relax]) -> ast.Relax | None:
    """The relaxation of ``op``: its own, else its groups' (op table); later definitions (the
    user's own file) win."""
    for name in ops.covering(op):
        for r in reversed(relaxes):
            if name in r.ops:
                return r
    return None
