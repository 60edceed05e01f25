"""Static checks of a domain: every rule and relaxation is compiled once on a tiny synthetic
graph, so undefined names, wrong kinds and non-linear uses of generators are reported at
load time with file:line:col, before any model is seen."""

from __future__ import annotations

from absdsl.compiler import codegen
from absdsl.compiler import linear_maps as lm
from absdsl.compiler.ir import Graph, Node
from absdsl.dsl import ast
from absdsl.errors import DSLError

KINDS = ("bound", "gens")
_SAMPLE_PARAMS = {"leaky_relu": {"negative_slope": 0.01},
                  "hardtanh": {"min_val": -1.0, "max_val": 1.0}}


def _graph(op: str) -> Graph:
    dense = lm.Dense("W", "W_abs", "b")
    nodes = [Node("x", "input", [], (4,))]
    if op == "affine" or op == "input":
        if op == "affine":
            nodes.append(Node("y", "affine", ["x"], (4,), {"map": dense}))
    elif op == "add":
        nodes += [Node("a", "affine", ["x"], (4,), {"map": dense}),
                  Node("y", "add", ["x", "a"], (4,))]
    else:
        nodes.append(Node("y", op, ["x"], (4,), {"params": _SAMPLE_PARAMS.get(op, {})}))
    return Graph(nodes, nodes[-1].name)


def check_forward(domain: ast.Domain) -> None:
    for f in domain.state:
        if f.kind not in KINDS:
            raise DSLError(f"unknown kind {f.kind!r} for state variable '{f.name}' (kinds: "
                           f"{', '.join(KINDS)})", domain.source, domain.filename, f.pos.line,
                           f.pos.column)
    if not domain.state:
        raise DSLError(f"domain {domain.name} declares no state (and is not a back-substitution "
                       f"domain: add 'output backsub')", domain.source, domain.filename,
                       domain.pos.line, domain.pos.column)
    if domain.gamma is None:
        raise DSLError(f"domain {domain.name} has no gamma block: 'gamma {{ LOWER <= x <= "
                       f"UPPER }}'", domain.source, domain.filename, domain.pos.line,
                       domain.pos.column)
    for required in ("input", "affine"):
        if domain.rule_for(required) is None:
            raise DSLError(f"domain {domain.name} has no '{required}' rule (every network "
                           f"needs one)", domain.source, domain.filename, domain.pos.line,
                           domain.pos.column)
    for rule in domain.rules:
        for op in rule.ops:
            target = "sigmoid" if op == "monotone" else op
            if target not in ("input", "affine", "add") + tuple(codegen.ACTIVATION_CODE):
                raise DSLError(f"rule for unknown op {op!r} (ops: input, affine, add, monotone, "
                               f"{', '.join(codegen.ACTIVATION_CODE)})", domain.source,
                               domain.filename, rule.pos.line, rule.pos.column)
            out = codegen.Emitter()
            states = codegen.forward_pass(_graph(target), domain, out, "True")
            codegen.concretize(domain, out, states["y" if target != "input" else "x"])


def check_relax(relax: ast.Relax, filename: str, source: str) -> None:
    if not relax.cases or relax.cases[-1].cond is not None:
        raise DSLError("a relaxation must end with an else case", source, filename,
                       relax.pos.line, relax.pos.column)
    for op in relax.ops:
        if op not in codegen.ACTIVATION_CODE and op != "monotone":
            raise DSLError(f"relaxation for unknown activation {op!r}", source, filename,
                           relax.pos.line, relax.pos.column)
        real = "sigmoid" if op == "monotone" else op
        codegen.relax_function(relax, real, _SAMPLE_PARAMS.get(real, {}), codegen.Emitter(),
                               ast.Domain("relax", relax.pos), filename, source)


def check_loaded(loaded) -> None:
    domain = loaded.domain
    if loaded.intermediate is None:
        check_forward(domain)
        return
    check_forward(loaded.intermediate)
    for relax in loaded.relaxes:
        check_relax(relax, relax.filename, relax.source)
