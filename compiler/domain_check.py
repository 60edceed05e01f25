"""Static checks of a domain: every rule and relaxation is compiled once on a tiny synthetic
graph, so undefined names, wrong kinds and non-linear uses of generators are reported at
load time with file:line:col, before any model is seen.

The check needs the compiler, which sits above the DSL, so it lives here and registers itself
with the DSL loader (:func:`absdsl.dsl.loader.register_domain_check`) when this module is
imported; ``import absdsl`` imports it."""

from __future__ import annotations

from ..dsl import ast
from ..dsl.loader import LoadedDomain, register_domain_check
from ..errors import DSLError
from . import codegen, ops
from . import linear_maps as lm
from .ir import Graph, Node

KINDS = ("bound", "gens")


def covered_ops(name: str, elementwise_only: bool = False) -> list[str]:
    """The table's ops a rule or relaxation named ``name`` applies to ([] if none)."""
    if name in ops.OPS:
        return [name] if ops.OPS[name].elementwise or not elementwise_only else []
    if name in ops.GROUPS:
        return [o.name for o in ops.OPS.values() if name in o.groups
                and (o.elementwise or not elementwise_only)]
    return []


def sample_params(op: str) -> dict:
    example = ops.get(op).example
    return dict(example[0]) if example is not None else ops.get(op).sample_params()[0]


def _graph(op: str) -> Graph:
    dense = lm.Dense("W", "W_abs", "b")
    example = ops.OPS[op].example if op in ops.OPS else None
    if example is not None:
        _, shape_in, shape_out = example
        nodes = [Node("x", "input", [], shape_in),
                 Node("y", op, ["x"], shape_out, {"params": sample_params(op)})]
        return Graph(nodes, "y")
    nodes = [Node("x", "input", [], (4,))]
    if op == "affine" or op == "input":
        if op == "affine":
            nodes.append(Node("y", "affine", ["x"], (4,), {"map": dense}))
    elif op in ("add", "mul"):
        nodes += [Node("a", "affine", ["x"], (4,), {"map": dense}),
                  Node("y", op, ["x", "a"], (4,))]
    else:
        nodes.append(Node("y", op, ["x"], (4,), {"params": sample_params(op)}))
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
        for name in rule.ops:
            targets = covered_ops(name)
            if not targets or name in ("cat", "reshape"):
                raise DSLError(f"rule for unknown op {name!r} (ops: input, affine, add, "
                               f"{', '.join(ops.ACTIVATIONS)}, max_pool2d; groups: "
                               f"{', '.join(ops.GROUPS)})", domain.source,
                               domain.filename, rule.pos.line, rule.pos.column)
            for target in targets:
                if codegen.find_rule(domain, target) is not rule:
                    continue  # a more specific rule covers it
                out = codegen.Emitter()
                states = codegen.forward_pass(_graph(target), domain, out, "True")
                codegen.concretize(domain, out, states["y" if target != "input" else "x"])


def check_relax(relax: ast.Relax, filename: str, source: str) -> None:
    if not relax.cases or relax.cases[-1].cond is not None:
        raise DSLError("a relaxation must end with an else case", source, filename,
                       relax.pos.line, relax.pos.column)
    for name in relax.ops:
        targets = covered_ops(name, elementwise_only=True) if relax.arity == 1 else (
            [name] if name in ops.OPS and ops.OPS[name].arity == 2 else [])
        if not targets:
            raise DSLError(f"relaxation for unknown activation {name!r} (activations: "
                           f"{', '.join(ops.ACTIVATIONS)}; groups: {', '.join(ops.GROUPS)})",
                           source, filename, relax.pos.line, relax.pos.column)
        for real in targets:
            codegen.relax_function(relax, real, sample_params(real), codegen.Emitter(),
                                   ast.Domain("relax", relax.pos), filename, source)


def check_loaded(loaded: LoadedDomain) -> None:
    domain = loaded.domain
    if loaded.intermediate is None:
        check_forward(domain)
        return
    check_forward(loaded.intermediate)
    for relax in loaded.relaxes:
        check_relax(relax, relax.filename, relax.source)


register_domain_check(check_loaded)
