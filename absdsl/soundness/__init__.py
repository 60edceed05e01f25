"""Hypothesis-driven soundness checking of any abstract domain (built-in or a user's file).

    from absdsl.soundness import check_domain
    report = check_domain("my_domain.absd", max_examples=50, seed=0)
    print(report.format()); assert report.ok

Properties (each reported PASS or with a shrunk counterexample; docs/testing.md has the
details and what the checker can still miss):

- ``bounds``: small random networks (Linear and Conv1d/Conv2d with stride, padding incl.
  ``'same'``, dilation, groups, with or without bias; eval BatchNorm; AvgPool2d;
  AdaptiveAvgPool2d; Flatten; residual ``x + f(x)`` and ``x - f(x)``; ``cat`` incl.
  ``cat([z, act(z)])``; ReLU, LeakyReLU, Sigmoid, Tanh, Hardtanh, ReLU6) whose biases are
  then *aimed*: each pre-activation neuron's bounds, as the domain under test computes them,
  are moved on, just beside (either side, 1e-12 to 0.3 of the scale) or far from a guard
  surface of the domain (``l = 0``, ``u = 0``, ``u = -l`` and every surface its guards,
  ``max``/``min``/``relu``/``|.|`` kinks and ternaries compare, read from the parsed AST),
  or made stably active, inactive or unstable. Input boxes are drawn at scales 1e-6 to 1e3,
  degenerate, touching 0, symmetric, or on those surfaces. Every network prefix is bounded
  and concrete points (corners first) must lie in the bounds.
- ``spec``: the same for ``C @ f(x)`` at every prefix, with margin rows, sums and
  differences of output pairs (they expose wrong correlations) and random rows.
- ``engine``: larger networks (conv chains on 6x6 to 9x9 maps, 16-40 wide Linear layers)
  with mostly stable neurons, so the optimised paths run: patches, live columns, sparse
  relaxation lines, chunked back-substitution under a small memory budget. Sound at concrete
  points, and equal (to the tolerance) to the vmap form and to the plain engine (patches,
  live columns and sparse lines switched off). :data:`ENGINE_COVERAGE` counts the paths hit.
- ``relaxations`` (domains with relaxations): each relaxation's lines on a grid of the guard
  surfaces (constants from the AST included) at scales 1e-6 to 1e3, and on random l <= u.
- ``continuity`` (opt-in, not a soundness property): for the ops a domain declares
  ``continuous``, the robust loss along a direction in weight space has no jump (grid,
  then refinement around the largest difference).

Floating-point policy (docs/testing.md states the same): float64 throughout; a bound at
output ``i`` of sample ``b`` is violated only by more than
``1e-9 * (M[b, i] + |value| + |bound|)``, where ``M`` bounds the magnitude of every term
summed into that output (the network run with ``|W|``, ``|b|`` on ``max(|lo|, |hi|)``): a
tolerance local to the values involved, so a 1 % error at scale 1e-6 is found next to 1e3
entries. NaN bounds are always a violation.

The package splits the checker along these properties: ``common`` (the ops drawn, the
tolerance), ``nets`` (network descriptions, magnitudes), ``surfaces`` (guard surfaces from
the AST), ``strategies`` (Hypothesis draws, aiming), ``report``, ``checks`` (bounds and
spec), ``engine``, ``relaxations``, ``continuity``, ``rules`` (the sweep of every rule) and
``suite`` (``check_domain``). A test that patches a name patches it in the module that
reads it.
"""
from __future__ import annotations

from .checks import (
    compare,
    describe_case,
    shrink_time_limit,
    soundness_property,
    spec_rows,
    supported_ops,
    tap_pairs,
    without_local_constants,
)
from .common import (
    ACTIVATION_OPS,
    ALL_OPS,
    DEFAULT_PROPERTIES,
    DTYPE,
    LAYER_OPS,
    PROPERTIES,
    REL_TOL,
    RELAX_RANGE,
    RULE_OP,
    local_tolerance,
    tolerance,
)
from .continuity import (
    CONTINUITY_LEVELS,
    CONTINUITY_POINTS,
    Jump,
    continuity_property,
    continuous_ops,
    find_jump,
    robust_loss,
)
from .engine import (
    ENGINE_COVERAGE,
    engine_property,
)
from .nets import (
    Layer,
    NetSpec,
    TapNet,
    build_layer,
    build_net,
    build_seq,
    harvest,
    magnitude,
    n_weights,
)
from .relaxations import (
    RELAX_PARAMS,
    check_product_planes,
    check_relaxation,
    concrete_activation,
    product_relaxation,
    relax_grid,
    relax_points,
    relaxation_functions,
    relaxation_property,
)
from .report import (
    CheckReport,
    Counterexample,
    PropertyResult,
    RuleReach,
    Violation,
)
from .rules import (
    PRODUCT_VALUES,
    RULE_OFFSETS,
    RULE_WIDTHS,
    SLOPE_FACTORS,
    domain_rules,
    rules_of_op,
    rules_property,
    special_boxes,
    special_points,
)
from .strategies import (
    AIM_MODES,
    AIM_SIZES,
    SCALES,
    aim,
    engine_networks,
    input_boxes,
    networks,
    plan_tokens,
    sample_points,
    weight_values,
)
from .suite import (
    check_domain,
)
from .surfaces import (
    BASE_SURFACES,
    Surface,
    guard_surfaces,
)

__all__ = [
    "ACTIVATION_OPS",
    "AIM_MODES",
    "AIM_SIZES",
    "ALL_OPS",
    "BASE_SURFACES",
    "CONTINUITY_LEVELS",
    "CONTINUITY_POINTS",
    "CheckReport",
    "Counterexample",
    "DEFAULT_PROPERTIES",
    "DTYPE",
    "ENGINE_COVERAGE",
    "Jump",
    "LAYER_OPS",
    "Layer",
    "NetSpec",
    "PRODUCT_VALUES",
    "PROPERTIES",
    "PropertyResult",
    "RELAX_PARAMS",
    "RELAX_RANGE",
    "REL_TOL",
    "RULE_OFFSETS",
    "RULE_OP",
    "RULE_WIDTHS",
    "RuleReach",
    "SCALES",
    "SLOPE_FACTORS",
    "Surface",
    "TapNet",
    "Violation",
    "aim",
    "build_layer",
    "build_net",
    "build_seq",
    "check_domain",
    "check_product_planes",
    "check_relaxation",
    "compare",
    "concrete_activation",
    "continuity_property",
    "continuous_ops",
    "describe_case",
    "domain_rules",
    "engine_networks",
    "engine_property",
    "find_jump",
    "guard_surfaces",
    "harvest",
    "input_boxes",
    "local_tolerance",
    "magnitude",
    "n_weights",
    "networks",
    "plan_tokens",
    "product_relaxation",
    "relax_grid",
    "relax_points",
    "relaxation_functions",
    "relaxation_property",
    "robust_loss",
    "rules_of_op",
    "rules_property",
    "sample_points",
    "shrink_time_limit",
    "soundness_property",
    "spec_rows",
    "special_boxes",
    "special_points",
    "supported_ops",
    "tap_pairs",
    "tolerance",
    "weight_values",
    "without_local_constants",
]
