"""The entry point: ``check_domain`` runs the chosen properties on a domain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absdsl.errors import InputError

from .checks import _run_property, soundness_property, supported_ops
from .common import DEFAULT_PROPERTIES, PROPERTIES, _loaded
from .continuity import continuity_property, continuous_ops
from .engine import ENGINE_COVERAGE, engine_property
from .relaxations import (
    check_product_planes,
    check_relaxation,
    product_relaxation,
    relax_grid,
    relaxation_functions,
    relaxation_property,
)
from .report import CheckReport, PropertyResult, Violation
from .rules import rules_property
from .surfaces import guard_surfaces


def check_domain(domain_spec: str | Path | Any, max_examples: int = 50, seed: int = 0,
                 properties: tuple[str, ...] = DEFAULT_PROPERTIES,
                 shrink_seconds: float = 30.0, stop_on_failure: bool = False) -> CheckReport:
    """Property-test ``domain_spec`` (a built-in name, a file path, ``path:Name``).

    ``stop_on_failure`` skips the properties after the first failing one (the mutation
    tests: whether a domain is flagged does not depend on it).

    Returns a :class:`CheckReport`: one :class:`PropertyResult` per property, a failing one
    holding the shrunk :class:`Counterexample`. DSL errors in the file propagate
    (:class:`absdsl.errors.DSLError`); an unknown property is an ``InputError``.
    """
    unknown = [p for p in properties if p not in PROPERTIES]
    if unknown:
        raise InputError(f"unknown property {unknown[0]!r} (properties: {', '.join(PROPERTIES)})")
    loaded = _loaded(domain_spec)  # raises DSLError / AbsdslError before any work
    domain = str(domain_spec) if not hasattr(domain_spec, "domain") else domain_spec
    report = CheckReport(loaded.name)
    surfaces = tuple(guard_surfaces(loaded))
    report.surfaces = list(surfaces)
    ops, missing = supported_ops(domain)
    if "hardtanh" not in ops:
        ops = ops - {"relu6"}
    report.unsupported = missing

    def stop() -> bool:
        return stop_on_failure and not report.ok

    if "rules" in properties:
        rules_result, reach = rules_property(domain, ops)
        report.results.append(rules_result)
        report.reach = list(reach.values())
    if not stop() and "bounds" in properties:
        report.results.append(_run_property(
            "sound: concrete outputs of every layer lie in the bounds",
            soundness_property(domain, ops, False, surfaces), max_examples, seed,
            shrink_seconds))
    if not stop() and "spec" in properties:
        report.results.append(_run_property(
            "sound: C @ f(x) lies in the spec bounds (margins, pair sums and differences, "
            "random C)", soundness_property(domain, ops, True, surfaces), max_examples,
            seed + 1, shrink_seconds))
    if not stop() and "engine" in properties:
        ENGINE_COVERAGE.clear()
        report.results.append(_run_property(
            "sound and equal to the plain engine and the vmap form on larger networks "
            "(patches, live columns, sparse lines, chunks)",
            engine_property(domain, ops, surfaces), max(max_examples // 3, 1), seed + 3,
            shrink_seconds))
    if not stop() and "relaxations" in properties and relaxation_functions(domain):
        fns = relaxation_functions(domain)
        grid_result = PropertyResult("relaxations: lower <= f <= upper on the guard grid",
                                     True, 0)
        L, U, X = relax_grid(surfaces)
        try:
            for op, params, fn in fns:
                check_relaxation(op, params, fn, L, U, X)
                grid_result.examples += L.numel()
        except Violation as v:
            grid_result.passed = False
            grid_result.counterexample = v.cex
        report.results.append(grid_result)
        planes = product_relaxation(domain)
        if planes is not None:
            report.results.append(check_product_planes(planes))
        report.results.append(_run_property(
            "relaxations: lower <= f <= upper (random l <= u, x in [l, u])",
            relaxation_property(domain, surfaces), max_examples * 4, seed + 2,
            shrink_seconds))
    if not stop() and "continuity" in properties:
        acts = continuous_ops(domain) & ops
        if acts and "linear" in ops:
            report.results.append(_run_property(
                f"continuous: no jump in the robust loss along weight directions "
                f"({', '.join(sorted(acts))})", continuity_property(domain, acts),
                max(max_examples // 3, 1), seed + 4, shrink_seconds))
        else:
            report.results.append(PropertyResult(
                "continuous: nothing declared continuous (no check)", True, 0))
    return report
