"""Constants of the soundness checker: the ops it draws, the properties, the float tolerance."""

from __future__ import annotations

from typing import Any

import torch

from absdsl.compiler import ops as _ops

DTYPE = torch.float64
REL_TOL = 1e-9

# every activation of the op table that random networks can take (those defined on a half
# line, or growing too fast for the drawn weights, are checked by their relaxations only),
# plus relu6 (a spelling of hardtanh)
_NOT_IN_NETS = ("exp", "log", "log1p", "neg_log1p", "sqrt", "reciprocal", "inv1p", "pow",
                "pow_odd",
                "rsqrt_eps", "inv_norm")
ACTIVATION_OPS = tuple(o for o in _ops.ACTIVATIONS if o not in _NOT_IN_NETS) + ("relu6",)
# where an op's relaxation is checked (l and u inside): the rest of the line is not its domain
# or overflows float64
RELAX_RANGE: dict[str, tuple[float, float]] = {
    "exp": (-1e3, 50.0), "log": (1e-6, 1e3), "sqrt": (0.0, 1e3), "reciprocal": (1e-3, 1e3),
    "log1p": (-1.0 + 1e-6, 1e3), "neg_log1p": (-1.0 + 1e-6, 1e3), "inv1p": (-1.0 + 1e-3, 1e3),
    "pow": (-1e3, 1e3), "pow_odd": (-1e3, 1e3)}
LAYER_OPS = ("linear", "conv", "bn", "avgpool", "adaptive", "flatten", "residual", "cat")
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
    from absdsl.dsl.loader import load_domain
    return load_domain(domain)
