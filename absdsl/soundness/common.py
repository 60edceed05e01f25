"""Constants of the soundness checker: the ops it draws, the properties, the float tolerance."""

from __future__ import annotations

from typing import Any

import torch

from absdsl.compiler import ops as _ops
from absdsl.dsl.loader import load_domain

DTYPE = torch.float64
REL_TOL = 1e-9

# the widest boxes the relaxation and rule checks place (beyond, values overflow the tolerance)
_FINITE = 1e3
# activations random networks do not take (the relaxation checks and the rules sweep cover
# them): those defined on part of the line only (the op table's ``valid`` range), those no
# model spells directly (no torch function: reached only inside composites), and these two,
# which grow too fast for the drawn weights
_TOO_FAST = ("exp", "pow")
_NOT_IN_NETS = tuple(op.name for op in _ops.ELEMENTWISE
                     if op.valid is not None or op.name in _TOO_FAST
                     or not any(callable(f) for f in op.functions))
# every other activation of the op table, plus relu6 (a spelling of hardtanh)
ACTIVATION_OPS = tuple(o for o in _ops.ACTIVATIONS if o not in _NOT_IN_NETS) + ("relu6",)
# how far inside an open end of its valid range an op's boxes stay (the default 1e-6; 1 / x
# and 1 / (1 + x) grow fastest there)
_OPEN_END_GAP = {"reciprocal": 1e-3, "inv1p": 1e-3}
# ops defined on the whole line whose values overflow float64 (exp) or the tolerance beyond
_FINITE_RANGE = {"exp": (-_FINITE, 50.0), "pow": (-_FINITE, _FINITE),
                 "pow_odd": (-_FINITE, _FINITE)}


def _checked_range(op: _ops.Op) -> tuple[float, float]:
    """The op table's valid range of ``op``, kept off its open ends, within +-1e3."""
    assert op.valid is not None, op.name
    lo, hi, open_ends = op.valid
    gap = _OPEN_END_GAP.get(op.name, 1e-6) if open_ends else 0.0
    return max(lo + gap, -_FINITE), min(hi - gap, _FINITE)


# where an op's relaxation is checked (l and u inside): the rest of the line is not its domain
# or overflows float64
RELAX_RANGE: dict[str, tuple[float, float]] = _FINITE_RANGE | {
    op.name: _checked_range(op) for op in _ops.ELEMENTWISE if op.valid is not None}
LAYER_OPS = ("linear", "conv", "bn", "avgpool", "maxpool", "adaptive", "flatten", "residual",
             "cat")
ALL_OPS = LAYER_OPS + ACTIVATION_OPS
#: the properties ``check_domain`` runs by default (``continuity`` is opt-in)
DEFAULT_PROPERTIES = ("rules", "bounds", "spec", "engine", "relaxations")
PROPERTIES = DEFAULT_PROPERTIES + ("continuity",)
RULE_OP = {"relu6": "hardtanh"}  # ops lowered to another op's rule


def tolerance(*tensors: torch.Tensor) -> float:
    """``1e-9 * (1 + max |finite value|)`` over the given tensors (a global tolerance, for
    tests that compare whole tensors; the checker itself uses :func:`local_tolerance`)."""
    m = 0.0
    for t in tensors:
        if t.numel():
            finite = t.detach()[torch.isfinite(t.detach())]
            if finite.numel():
                m = max(m, float(finite.abs().max()))
    return REL_TOL * (1.0 + m)


def local_tolerance(*magnitudes: torch.Tensor) -> torch.Tensor:
    """Elementwise ``1e-9 * sum of |magnitudes|`` (broadcast), floored at 1e-300."""
    total = torch.zeros((), dtype=DTYPE)
    for m in magnitudes:
        total = total + torch.nan_to_num(m.detach().abs(), nan=0.0, posinf=1e300)
    return REL_TOL * total + 1e-300


def _loaded(domain: Any) -> Any:
    return load_domain(domain)
