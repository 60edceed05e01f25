"""The continuity property (opt-in): no jump in the robust loss along weight directions."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import strategies as st

import absdsl
from absdsl.compiler.codegen import find_rule
from absdsl.dsl.loader import load_domain

from .checks import _Test, _tolist
from .common import ACTIVATION_OPS, DTYPE, RULE_OP, _loaded
from .nets import Layer, NetSpec, build_net, harvest
from .report import Counterexample, Violation
from .strategies import _activation, aim, plan_tokens
from .surfaces import guard_surfaces

CONTINUITY_LEVELS = 8   # refinements of the grid around the largest difference
CONTINUITY_POINTS = 16  # sub-intervals per level


def continuous_ops(domain: Any) -> frozenset[str]:
    """The activations the domain declares ``continuous`` (``monotone`` covers them all).

    A forward domain's network is continuous only if its input, affine (and add) rules are
    too; a back-substitution domain's affine maps are exact, and it declares its activations
    with (empty) ``rule OP continuous {}`` entries.
    """
    loaded = load_domain(domain)
    rules = loaded.domain.rules
    declared = {op for r in rules if r.continuous for op in r.ops}
    if loaded.intermediate is None and not {"input", "affine"} <= declared:
        return frozenset()
    acts = set()
    for op in ACTIVATION_OPS:
        rule = find_rule(loaded.domain, RULE_OP.get(op, op))
        if rule is not None and rule.continuous:
            acts.add(op)
    return frozenset(acts)


def robust_loss(lb: torch.Tensor) -> torch.Tensor:
    """The robust cross-entropy of margin lower bounds (z_y = 0, z_i = -m_i), per batch."""
    z = torch.cat([torch.zeros(lb.shape[0], 1, dtype=lb.dtype), -lb], 1)
    return F.cross_entropy(z, torch.zeros(lb.shape[0], dtype=torch.long))


@dataclass
class Jump:
    t: float          # where along the direction
    width: float      # of the last interval
    size: float       # |L(t + width) - L(t)| there
    history: list[float]  # the largest difference at each level


def find_jump(loss: Callable[[float], float], t0: float, t1: float,
              points: int = CONTINUITY_POINTS, levels: int = CONTINUITY_LEVELS
              ) -> Jump | None:
    """Grid [t0, t1], then refine ``levels`` times around the largest difference; a jump
    when that difference stops shrinking with the interval (a Lipschitz function's falls
    by ``points`` per level) and is above rounding."""
    a, b = t0, t1
    history: list[float] = []
    vals: list[float] = []
    at = a
    for _ in range(levels + 1):
        ts = [a + (b - a) * i / points for i in range(points + 1)]
        vals = [loss(t) for t in ts]
        diffs = [abs(vals[i + 1] - vals[i]) for i in range(points)]
        if any(math.isnan(d) for d in diffs):
            i = next(i for i, d in enumerate(diffs) if math.isnan(d))
            return Jump(ts[i], ts[i + 1] - ts[i], math.nan, history + [math.nan])
        i = max(range(points), key=lambda k: diffs[k])
        history.append(diffs[i])
        at = ts[i]
        a, b = ts[i], ts[i + 1]
    scale = 1.0 + max(abs(v) for v in vals)
    last = history[-1]
    if last > 1e-7 * scale and last > 0.05 * history[-3]:
        return Jump(at, b - a, last, history)
    return None


def continuity_property(domain: Any, acts: frozenset[str]) -> _Test:
    """The robust loss along a random direction in weight space, through a neuron aimed at
    a guard surface, has no jump (see :func:`find_jump`)."""
    loaded_surfaces = guard_surfaces(_loaded(domain))

    moderate = st.floats(-2.0, 2.0, allow_nan=False, width=64)

    @st.composite
    def case(draw: Any) -> tuple:
        # moderate weights and boxes: a saturated loss (huge margins) hides any jump
        # (one input, two or more neurons: every neuron correlated with every other one)
        d = draw(st.sampled_from([1, 1, 2, 3]))
        layers: list[Layer] = []
        width = d
        for _ in range(draw(st.integers(1, 2))):
            out = draw(st.integers(2, 4))
            n = out * width + out
            layers.append(Layer("linear", (out,), tuple(draw(st.lists(moderate, min_size=n,
                                                                        max_size=n)))))
            layers.append(draw(_activation(acts)))
            width = out
        n_out = draw(st.integers(2, 3))
        n = n_out * width + n_out
        layers.append(Layer("linear", (n_out,), tuple(draw(st.lists(moderate, min_size=n,
                                                                      max_size=n)))))
        net = NetSpec((d,), tuple(layers))
        centre = torch.tensor(draw(st.lists(st.floats(-1, 1, width=64), min_size=d,
                                            max_size=d)), dtype=DTYPE)
        radius = torch.tensor(draw(st.lists(st.floats(0.05, 1, width=64), min_size=d,
                                            max_size=d)), dtype=DTYPE)
        boxes = ((centre - radius).reshape(1, d), (centre + radius).reshape(1, d))
        plan = draw(plan_tokens((1, 6, 0, 0, 1)))
        return (net, boxes, plan, draw(st.integers(0, 2**16)),
                draw(st.sampled_from([0.05, 0.2, 0.5])), draw(st.integers(0, n_out - 1)))

    def inner(case: tuple) -> None:
        net_spec, (lo, hi), plan, s, span, label = case
        net = build_net(net_spec)
        prog = absdsl.compile(net, domain, input_shape=net_spec.input_shape)
        aim(net, prog, lo, hi, plan, tuple(loaded_surfaces))
        last = net[-1]
        assert isinstance(last, nn.Linear)
        n_out = last.out_features
        C = absdsl.margin_spec(torch.tensor([label]), n_out).to(DTYPE)
        base = {k: v.detach().clone() for k, v in net.named_parameters()}
        g = torch.Generator().manual_seed(s)
        direction = {k: torch.randn(v.shape, generator=g, dtype=DTYPE) for k, v in base.items()}
        norm = math.sqrt(sum(float((v ** 2).sum()) for v in direction.values()))

        def loss(t: float) -> float:
            params = {k: base[k] + (t / norm) * direction[k] for k in base}
            with torch.no_grad():
                lb, _ = prog.functional(params, lo, hi, C)
            return float(robust_loss(lb))

        jump = find_jump(loss, -span, span)
        if jump is not None:
            final = NetSpec(net_spec.input_shape, harvest(net_spec.layers, net))
            raise Violation(Counterexample(
                "continuity", final.describe(), _tolist(lo[0]), _tolist(hi[0]), None,
                "continuity of the robust loss (value = L(t), bound = L(t + width))", (label,),
                loss(jump.t), loss(jump.t + jump.width),
                jump.size, 0.0, _tolist(C[0]),
                note=f"jump of {jump.size:.6g} between t = {jump.t:.17g} and "
                     f"t + {jump.width:.3g} along a unit direction (seed {s}); largest "
                     f"difference per refinement level: "
                     + ", ".join(f"{h:.3g}" for h in jump.history)))

    return _Test({"case": case()}, inner)
